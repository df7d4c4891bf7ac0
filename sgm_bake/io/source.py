"""Resolve a SOURCE argument: a local model folder, or a Hub model id fetched with
huggingface_hub. The resolved commit is recorded so the output can name exactly what it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sgm_bake.errors import SGMError

logger = logging.getLogger(__name__)

# Weights of other frameworks are never needed; PyTorch pickles only when no safetensors exist.
ALWAYS_SKIP = [
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.ot",
    "*.tflite",
    "*.gguf",
    "*.ggml",
    "*.mlmodel",
    "*.mlpackage/*",
    "original/*",
    "consolidated*",
    "*.pdparams",
]
PICKLE_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Source:
    """A checkpoint folder on disk and where it came from."""

    path: Path
    id: str
    revision: str | None
    hub: bool


def resolve_source(
    source: str, revision: str | None = None, cache_dir: Path | None = None
) -> Source:
    """A local folder as is; anything else that looks like a Hub id is downloaded."""
    local = Path(source).expanduser()
    if local.exists():
        if revision:
            raise SGMError(f"--revision applies to Hub ids, but {source} is a local folder")
        return Source(local.resolve(), local.resolve().name, None, False)
    if not _REPO_ID.match(source) or source.startswith((".", "/", "~")):
        raise SGMError(f"source {source} does not exist locally and is not a Hub model id")
    return _download(source, revision, cache_dir)


def _download(repo_id: str, revision: str | None, cache_dir: Path | None) -> Source:
    from huggingface_hub import HfApi, snapshot_download

    from sgm_bake.io.hub import unreachable

    reason = unreachable()
    if reason is not None:
        cached = _cached(repo_id, revision, cache_dir)
        if cached is not None:
            logger.warning("%s; using the cached copy of %s", reason, repo_id)
            return cached
        raise SGMError(
            f"{repo_id} is not a local folder and not in the local cache, and {reason}: check "
            "the network, or pass a local folder"
        )
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo_id, revision=revision)
        files = [sibling.rfilename for sibling in info.siblings or []]
        skip = list(ALWAYS_SKIP)
        if any(name.endswith(".safetensors") for name in files):
            skip += PICKLE_WEIGHTS
        logger.info("downloading %s at %s", repo_id, info.sha)
        path = snapshot_download(
            repo_id, revision=info.sha, ignore_patterns=skip, cache_dir=cache_dir
        )
    except GatedRepoError as exc:
        raise SGMError(
            f"{repo_id} is gated; accept its terms on the Hub and log in (HF_TOKEN or "
            "'hf auth login')"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise SGMError(
            f"Hub model {repo_id} was not found (or is private); check the id and your login"
        ) from exc
    except RevisionNotFoundError as exc:
        raise SGMError(
            f"revision {revision!r} of {repo_id} does not exist; check --revision"
        ) from exc
    except HfHubHTTPError as exc:
        raise SGMError(
            f"the Hub refused {repo_id} ({type(exc).__name__}); check the id and your login"
        ) from exc
    except Exception as exc:  # no network (httpx errors, offline mode): try the local cache
        cached = _cached(repo_id, revision, cache_dir)
        if cached is not None:
            logger.warning("the Hub is unreachable (%s); using the cached copy", type(exc).__name__)
            return cached
        raise SGMError(
            f"could not download {repo_id} from the Hub ({type(exc).__name__}) and it is not "
            "in the local cache; check the network, or pass a local folder"
        ) from exc
    return Source(Path(path), repo_id, info.sha, True)


def _cached(repo_id: str, revision: str | None, cache_dir: Path | None) -> Source | None:
    """A snapshot already in the huggingface_hub cache, with the commit it resolves to."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except Exception:
        return None
    return Source(path, repo_id, path.name, True)


# Files that describe a model folder but do not change what it computes: a content key ignores
# them (a model card re-rendered after verification does not make another model).
NOT_CONTENT = {"README.md"}
NOT_CONTENT_DIRS = {".git", ".cache", ".huggingface", "sgm"}
HASH_MEMO = "file-hashes.json"


def _memo_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sgm-bake" / HASH_MEMO


def _read_memo(path: Path) -> dict[str, list[object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(path: Path, memo: dict[str, list[object]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(memo, sort_keys=True), encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:  # a read-only cache only costs hashing again next time
        logger.debug("could not remember file hashes in %s (%s)", path, exc)


def content_key(folder: Path, revision: str | None = None) -> str:
    """A digest of what a model folder holds, so that work resumed for a model (the response
    store, the tuner's journal) is keyed by its content, never by its folder's name.

    A Hub snapshot (`revision`, its commit) is that commit and the bytes of its config; a local
    folder (no revision) is the sha256 of
    every file that shapes the model (config, tokenizer, processor, chat template, weights, and
    the rest, but not the model card). Digests of large files are remembered in the user cache
    by path, size, inode and modification time, so a resumed run does not read them again."""
    from sgm_bake.io.safetensors import file_sha256

    digest = hashlib.sha256()
    config = folder / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    if revision:
        digest.update(f"revision:{revision}".encode())
        return digest.hexdigest()
    memo_path = _memo_path()
    memo = _read_memo(memo_path)
    changed = False
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            not path.is_file()
            or relative.as_posix() in NOT_CONTENT
            or any(part in NOT_CONTENT_DIRS for part in relative.parts[:-1])
        ):
            continue
        stat = path.stat()
        identity: list[object] = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns]
        real = str(path.resolve())
        remembered = memo.get(real)
        if isinstance(remembered, list) and remembered[:4] == identity and len(remembered) == 5:
            file_digest = str(remembered[4])
        else:
            file_digest = file_sha256(path)
            if stat.st_size >= 1 << 20:
                memo[real] = [*identity, file_digest]
                changed = True
        digest.update(f"{relative.as_posix()}\0{file_digest}\0".encode())
    if changed:
        _write_memo(memo_path, memo)
    return digest.hexdigest()
