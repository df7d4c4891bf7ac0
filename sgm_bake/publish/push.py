"""Push a baked folder to the Hugging Face Hub, only if it is verified and intact.

The token comes from huggingface_hub (`HF_TOKEN` or the stored login); it is never printed,
logged or written to any file. The upload is one commit holding exactly the files the record
lists (after re-checking their sha256), so nothing unverified rides along.

Nothing in the folder is written before the upload has succeeded: the repository id is checked
first, the card that names it is rendered in memory and uploaded with a record that holds its
sha256, and only after the Hub has accepted the commit are the card and the record written
locally (a read-only folder is pushed all the same, with a warning). Every request to the Hub
has a timeout, so a Hub that stops answering ends the push with one line instead of a hang.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sgm_bake.errors import SGMError
from sgm_bake.io.paths import relative_name
from sgm_bake.publish.card import CARD_FILE, render_card
from sgm_bake.record import RECORD_PATH, BakeRecord, read_record, record_text, require_intact
from sgm_bake.text import format_bytes, table

logger = logging.getLogger(__name__)

HUB_TIMEOUT = 120.0
"""Seconds a Hub request may wait for the next byte (or to connect, or to send)."""


RESUMABLE_BYTES = 50 * 1024**3
"""Above this size `push` uploads resumably by default (`--resumable` / `--single-commit`)."""


@dataclass(frozen=True)
class UploadPlan:
    """What a push would upload, and how."""

    repo_id: str
    files: list[tuple[str, int]]
    private: bool | None
    """True or False: the visibility of a repository the push creates; None: the Hub's default
    (public) for a new one. An existing repository's visibility is never changed."""
    revision: str | None
    commit_message: str
    create_pr: bool = False
    resumable: bool = False
    token_source: str = "HF_TOKEN or the stored login"

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> list[str]:
        """What would happen, for `--dry-run`: the files, the target and the upload mode (never
        the token, only where it comes from)."""
        lines = table(("file", "size"), [(name, format_bytes(size)) for name, size in self.files])
        where = self.revision or "main"
        target = (
            f"a pull request against {where} of {self.repo_id}"
            if self.create_pr
            else f"{self.repo_id} ({where})"
        )
        visibility = {True: "private", False: "public", None: "public"}[self.private]
        mode = (
            "resumable: upload_folder (several commits, re-run to resume), then one commit with "
            "the card and the record"
            if self.resumable
            else "one commit"
        )
        return [
            *lines,
            f"{len(self.files)} files, {format_bytes(self.total_bytes)} to {target}",
            f"repository: created {visibility} if missing (an existing one keeps its visibility)",
            f"upload: {mode}; commit message: {self.commit_message!r}",
            f"token: {self.token_source}",
        ]


def check_repo_id(repo_id: str) -> None:
    """Refuse a repository id the Hub would refuse (huggingface_hub's own rule), before it is
    used anywhere: in a card's metadata, a newline or markup in it would become YAML or HTML."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SGMError(
            f"{repo_id!r} is not a Hub repository id: use 'name' or 'namespace/name' with "
            "letters, digits, '-', '_' and '.' (at most 96 characters)"
        ) from exc


def check_publishable(folder: Path) -> BakeRecord:
    """Refuse an output whose files no longer match the record (exit 4), or whose verification
    failed or is missing (exit 2)."""
    record = require_intact(folder)
    verification = record.verification
    if verification is None:
        raise SGMError(f"{folder} has not been verified; run 'sgm-bake verify {folder}' first")
    if not verification.passed:
        raise SGMError(f"{folder} failed verification; it must not be published (bake it again)")
    return record


def recorded_path(folder: Path, name: str) -> Path:
    """A file the record lists, refused if it or a folder on its way is a symlink: the upload
    would send whatever the link points to, which the sha256 check may not have read."""
    path = folder
    for part in relative_name(name, "recorded file").parts:
        path = path / part
        if path.is_symlink():
            raise SGMError(
                f"{path} has become a symlink since it was baked; a pushed folder holds only "
                "real files: bake it again"
            )
    return path


def plan_upload(
    folder: Path,
    repo_id: str,
    private: bool | None,
    revision: str | None,
    message: str | None,
    *,
    create_pr: bool = False,
    resumable: bool | None = None,
    token_given: bool = False,
) -> UploadPlan:
    """Check the folder (every sha256, a passing verification) and the repository id, and say
    what a push would upload: `resumable` None chooses by size (RESUMABLE_BYTES)."""
    check_repo_id(repo_id)
    if folder.is_symlink():
        raise SGMError(f"{folder} is a symlink; push the real folder it points to")
    names = sorted([*read_record(folder).files, RECORD_PATH])
    paths = [recorded_path(folder, name) for name in names]
    record = check_publishable(folder)
    files = [(name, path.stat().st_size) for name, path in zip(names, paths, strict=True)]
    total = sum(size for _, size in files)
    if resumable is None:
        resumable = total > RESUMABLE_BYTES and not create_pr
    if resumable and create_pr:
        raise SGMError(
            "--create-pr opens one pull request from one commit, and a resumable upload makes "
            "several: pass --single-commit, or push to a branch with --revision instead"
        )
    source = record.source.id
    return UploadPlan(
        repo_id,
        files,
        private,
        revision,
        message or f"Upload SGM-detoxified {source} (sgm-bake)",
        create_pr=create_pr,
        resumable=resumable,
        token_source="--token" if token_given else "HF_TOKEN or the stored login",
    )


@contextlib.contextmanager
def hub_timeout(seconds: float) -> Iterator[None]:
    """Give every request of huggingface_hub's shared HTTP client a timeout (connect, each read,
    each write), for the block. huggingface_hub's client waits forever by default."""
    from huggingface_hub import get_session

    session = get_session()
    if not hasattr(session, "timeout"):  # huggingface_hub < 1.0 (requests): no client timeout
        yield
        return
    previous = session.timeout
    session.timeout = seconds
    try:
        yield
    finally:
        session.timeout = previous


def _write_locally(folder: Path, card: str, record: BakeRecord) -> None:
    """After the push: the card that names the repository, and the record holding its sha256."""
    try:
        for name, text in ((CARD_FILE, card), (RECORD_PATH, record_text(record))):
            target = folder / name
            if target.read_text(encoding="utf-8") == text:
                continue
            partial = target.with_name(f".{target.name}.partial")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, target)
    except OSError as exc:
        logger.warning(
            "pushed, but %s could not be updated with the card that names the repository (%s); "
            "the folder is as it was",
            folder,
            exc.strerror or type(exc).__name__,
        )


def push(
    folder: Path, plan: UploadPlan, timeout: float = HUB_TIMEOUT, token: str | None = None
) -> str:
    """Create the repo (and branch) and upload the planned files; return the commit's or the
    pull request's URL. `token` (from `--token`) goes to the client only; None lets
    huggingface_hub find HF_TOKEN or the stored login.

    One commit by default. A resumable plan uploads every file but the card and the record with
    `HfApi.upload_folder` (which splits a large folder into several commits and, re-run after an
    interruption, skips what the Hub already holds), then commits the card and the record last,
    so the repository holds a record only once every file it lists is there. The card and the
    record are uploaded from memory (the card names the repository); the folder is written only
    after the last commit succeeded."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    plan = plan_upload(
        folder,
        plan.repo_id,
        plan.private,
        plan.revision,
        plan.commit_message,
        create_pr=plan.create_pr,
        resumable=plan.resumable,
        token_given=token is not None,
    )
    record = read_record(folder)
    card = render_card(folder, record, plan.repo_id)  # the card's code snippet names the repo
    published = copy.deepcopy(record)
    published.files[CARD_FILE] = hashlib.sha256(card.encode("utf-8")).hexdigest()
    contents = {CARD_FILE: card.encode("utf-8"), RECORD_PATH: record_text(published).encode()}
    api = HfApi(token=token)
    try:
        with hub_timeout(timeout):
            api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
            if plan.revision and not plan.create_pr:
                api.create_branch(
                    plan.repo_id, branch=plan.revision, exist_ok=True, repo_type="model"
                )
            last = [name for name, _ in plan.files]
            if plan.resumable:
                api.upload_folder(
                    repo_id=plan.repo_id,
                    folder_path=folder,
                    allow_patterns=[name for name in last if name not in contents],
                    commit_message=plan.commit_message,
                    revision=plan.revision,
                    repo_type="model",
                )
                last = [name for name in last if name in contents]
            operations = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=contents.get(name, str(folder / name))
                )
                for name in last
            ]
            info = api.create_commit(
                plan.repo_id,
                operations=operations,
                commit_message=plan.commit_message,
                revision=plan.revision,
                create_pr=plan.create_pr or None,
                repo_type="model",
            )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise SGMError(
                "the Hub refused the login; pass --token, set HF_TOKEN or run 'hf auth login'"
            ) from exc
        if status == 403:
            raise SGMError(
                f"no write access to {plan.repo_id}; check the token's permissions and the "
                "namespace"
            ) from exc
        raise SGMError(f"the Hub answered HTTP {status} while pushing {plan.repo_id}") from exc
    except Exception as exc:  # no network: httpx errors, timeouts
        cause = "no answer within the timeout" if "Timeout" in type(exc).__name__ else None
        resume = "; run the same push again to resume" if plan.resumable else ""
        raise SGMError(
            f"could not push {plan.repo_id}: {cause or type(exc).__name__} from the Hub; check "
            f"the network (or raise --timeout, now {timeout:g} s); {folder} is unchanged{resume}"
        ) from exc
    if plan.create_pr:
        # A pull request is not the repository's content yet: the folder keeps its card.
        return str(getattr(info, "pr_url", "") or getattr(info, "commit_url", ""))
    _write_locally(folder, card, published)
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{plan.repo_id}")
