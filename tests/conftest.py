"""Shared fixtures: tiny real checkpoints built locally (never downloaded), each built once per
session. Helpers that tests call directly live in `tests/helpers.py`, not here."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sgm_bake.core.expertise import save_expertise
from tests.helpers import (
    planted_model,
    synthetic_expertise,
    tiny_family_checkpoint,
    tiny_llava,
)


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


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The planted model (PLANTED units detect the '#' marker) and its labelled set."""
    return planted_model(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def tiny_family(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[Any, Path]]:
    """`tiny_family(model_type)`: the tiny model of that family (random biases) and the folder it
    is saved in, built on first use and shared by every test of the session. Read-only: a test
    that changes the files works on a copy."""
    built: dict[str, tuple[Any, Path]] = {}

    def get(model_type: str) -> tuple[Any, Path]:
        if model_type not in built:
            folder = tmp_path_factory.mktemp(f"family-{model_type}")
            built[model_type] = (tiny_family_checkpoint(model_type, folder), folder)
        return built[model_type]

    return get
