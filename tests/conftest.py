"""Shared fixtures: tiny real checkpoints built locally (never downloaded)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from sgm_bake.core.expertise import Expertise, save_expertise
from tests.builders import synthetic_expertise, tiny_llava


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint folder (single file or sharded)."""
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                state[key] = handle.get_tensor(key)
    return state


def file_metadata(path: Path) -> dict[str, str] | None:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite keeps its response stores and hash cache in its own folder: never the user's
    ~/.cache, and never shared with another test run on the same machine (a concurrent run's
    store of the same tiny model would otherwise be resumed or refused as in use)."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fp32 LLaVA with tokenizer, processor and chat template (legacy checkpoint keys)."""
    return tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="session")
def llava_expertise(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random factors on gate/up/down outputs plus down_proj inputs of layer 1."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    expertise = synthetic_expertise(model, seed=1)
    extra = synthetic_expertise(model, ("mlp.down_proj:input",), seed=2)
    name = "model.language_model.layers.1.mlp.down_proj"
    expertise.modules[name] = extra.modules[name]
    path = tmp_path_factory.mktemp("expertise") / "expertise.safetensors"
    save_expertise(expertise, path)
    return path


@pytest.fixture
def copy_model(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a session model folder so a test can damage or rename its files."""

    def copy(folder: Path) -> Path:
        target = tmp_path / f"copy-{folder.name}"
        shutil.copytree(folder, target)
        return target

    return copy


def rename_keys(folder: Path, mapping: list[tuple[str, str]]) -> None:
    """Rewrite a single-file checkpoint with key prefixes renamed (to imitate other writers)."""
    path = folder / "model.safetensors"
    state = load_state(folder)
    metadata = file_metadata(path)
    renamed = {}
    for key, tensor in state.items():
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = tensor
    save_file(renamed, str(path), metadata=metadata)


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def expertise_for(model: torch.nn.Module, path: Path, seed: int = 0) -> Expertise:
    expertise = synthetic_expertise(model, seed=seed)
    save_expertise(expertise, path)
    return expertise
