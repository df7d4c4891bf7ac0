"""Push a baked folder to the Hugging Face Hub, only if it is verified and intact.

The token comes from huggingface_hub (`HF_TOKEN` or the stored login); it is never printed,
logged or written to any file. The upload is one commit holding exactly the files the record
lists (after re-checking their sha256), so nothing unverified rides along.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sgm_bake.errors import SGMError
from sgm_bake.io.paths import relative_name
from sgm_bake.pipeline.audit import check_hashes
from sgm_bake.pipeline.record import RECORD_PATH, BakeRecord, read_record, write_record
from sgm_bake.publish.card import write_card

logger = logging.getLogger(__name__)


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


def check_publishable(folder: Path) -> BakeRecord:
    """Refuse an output whose verification failed or is missing, or whose files changed."""
    record = read_record(folder)
    verification = record.verification
    if verification is None:
        raise SGMError(f"{folder} has not been verified; run 'sgm-bake verify {folder}' first")
    if not verification.passed:
        raise SGMError(f"{folder} failed verification; it must not be published (bake it again)")
    check = check_hashes(folder, record)
    if not check.ok:
        raise SGMError(
            f"{folder} no longer matches its recorded sha256 ({check.describe()}): it was "
            "tampered with or copied incompletely; bake it again"
        )
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


def push(folder: Path, plan: UploadPlan) -> str:
    """Create the repo (and branch) and upload the planned files in one commit; return its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    record = read_record(folder)
    write_card(folder, record, plan.repo_id)  # the card's code snippet names the repo
    write_record(folder, record, record.files)
    plan = plan_upload(folder, plan.repo_id, plan.private, plan.branch, plan.commit_message)
    api = HfApi()
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        if plan.branch:
            api.create_branch(plan.repo_id, branch=plan.branch, exist_ok=True, repo_type="model")
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
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
        raise SGMError(
            f"could not reach the Hub to push {plan.repo_id} ({type(exc).__name__}); check the "
            "network"
        ) from exc
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{plan.repo_id}")
