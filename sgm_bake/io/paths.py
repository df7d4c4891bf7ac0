"""Names read from files are untrusted: keep them inside the folder they belong to.

A checkpoint index, a profile set or a prompt set names other files. A hostile or broken file
could name `/etc/passwd`, `../../elsewhere` or a symlink pointing out of its folder; reading such
a file would copy foreign content into an output, and writing under such a name would create or
empty a file outside it. Every file-derived name goes through `contained` before it is used.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from sgm_bake.errors import SGMError


def relative_name(value: object, what: str) -> PurePosixPath:
    """A file-derived name as a clean relative POSIX path, or an SGMError saying why not."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SGMError(f"{what} {value!r} is not a file name; the file that names it is damaged")
    relative = PurePosixPath(value.replace("\\", "/"))
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or not relative.parts
        or relative.parts[0].endswith(":")  # a Windows drive (C:) survives as a relative part
    ):
        raise SGMError(
            f"{what} {value!r} points outside its folder; only relative names inside it are "
            "accepted"
        )
    return relative


def boundary_of(folder: Path) -> Path:
    """The folder whose contents a checkpoint may resolve into.

    A huggingface_hub snapshot (`models--org--name/snapshots/<commit>/`) holds symlinks into the
    repository's `blobs/` folder; those stay inside the repository's cache folder, which is the
    boundary there. Any other folder is its own boundary.
    """
    folder = folder.resolve()
    for inner in (folder, *folder.parents):
        repo = inner.parent.parent
        if inner.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
            return repo
    return folder


def is_within(path: Path, boundary: Path) -> bool:
    """Whether `path`, with every symlink followed, lies inside `boundary`."""
    try:
        return path.resolve().is_relative_to(boundary.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def contained(folder: Path, value: object, what: str, boundary: Path | None = None) -> Path:
    """`folder / value`, refused unless it stays inside `boundary` (default: `folder`, or the
    Hub cache folder of a snapshot) after following symlinks."""
    path = folder.joinpath(*relative_name(value, what).parts)
    if not is_within(path, boundary or boundary_of(folder)):
        raise SGMError(
            f"{what} {value!r} resolves outside {folder} (through a symlink); copy the file into "
            "the folder instead of linking it"
        )
    return path
