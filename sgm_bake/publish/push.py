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

logger = logging.getLogger(__name__)

HUB_TIMEOUT = 120.0
"""Seconds a Hub request may wait for the next byte (or to connect, or to send)."""


@dataclass(frozen=True)
class UploadPlan:
    """What a push would upload."""

    repo_id: str
    files: list[tuple[str, int]]
    private: bool
    branch: str | None
    commit_message: str

    def describe(self) -> list[str]:
        lines = [f"{name}  ({size:,} bytes)" for name, size in self.files]
        total = sum(size for _, size in self.files)
        target = f"{self.repo_id}" + (f" (branch {self.branch})" if self.branch else "")
        visibility = "private" if self.private else "public"
        return [*lines, f"{len(self.files)} files, {total:,} bytes to {target}, {visibility}"]


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
    folder: Path, repo_id: str, private: bool, branch: str | None, message: str | None
) -> UploadPlan:
    check_repo_id(repo_id)
    if folder.is_symlink():
        raise SGMError(f"{folder} is a symlink; push the real folder it points to")
    names = sorted([*read_record(folder).files, RECORD_PATH])
    paths = [recorded_path(folder, name) for name in names]
    record = check_publishable(folder)
    files = [(name, path.stat().st_size) for name, path in zip(names, paths, strict=True)]
    source = record.source.id
    return UploadPlan(
        repo_id, files, private, branch, message or f"Upload SGM-detoxified {source} (sgm-bake)"
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


def push(folder: Path, plan: UploadPlan, timeout: float = HUB_TIMEOUT) -> str:
    """Create the repo (and branch) and upload the planned files in one commit; return its URL.

    The card and the record are uploaded from memory (the card names the repository); the
    folder is written only after the commit succeeded."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    plan = plan_upload(folder, plan.repo_id, plan.private, plan.branch, plan.commit_message)
    record = read_record(folder)
    card = render_card(folder, record, plan.repo_id)  # the card's code snippet names the repo
    published = copy.deepcopy(record)
    published.files[CARD_FILE] = hashlib.sha256(card.encode("utf-8")).hexdigest()
    contents = {CARD_FILE: card.encode("utf-8"), RECORD_PATH: record_text(published).encode()}
    api = HfApi()
    try:
        with hub_timeout(timeout):
            api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
            if plan.branch:
                api.create_branch(
                    plan.repo_id, branch=plan.branch, exist_ok=True, repo_type="model"
                )
            operations = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=contents.get(name, str(folder / name))
                )
                for name, _ in plan.files
            ]
            info = api.create_commit(
                plan.repo_id,
                operations=operations,
                commit_message=plan.commit_message,
                revision=plan.branch,
                repo_type="model",
            )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise SGMError(
                "the Hub refused the login; set HF_TOKEN or run 'hf auth login'"
            ) from exc
        if status == 403:
            raise SGMError(
                f"no write access to {plan.repo_id}; check the token's permissions and the "
                "namespace"
            ) from exc
        raise SGMError(f"the Hub answered HTTP {status} while pushing {plan.repo_id}") from exc
    except Exception as exc:  # no network: httpx errors, timeouts
        cause = "no answer within the timeout" if "Timeout" in type(exc).__name__ else None
        raise SGMError(
            f"could not push {plan.repo_id}: {cause or type(exc).__name__} from the Hub; check "
            f"the network (or raise --timeout, now {timeout:g} s); {folder} is unchanged"
        ) from exc
    _write_locally(folder, card, published)
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{plan.repo_id}")
