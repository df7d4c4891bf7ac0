"""A golden bake: the shipped `organism` baked with a fixed expertise must give the same bytes,
so that any refactor that changes a single output byte is seen at once. The expertise is
arithmetic (no random generator, no profiling), and the bake is deterministic by design (float32
fold, rounded once, canonical headers); if the constant changes, the bake's output changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from click.testing import CliRunner

from sgm_bake.cli import main
from sgm_bake.core.expertise import Expertise, ModuleExpertise, save_expertise

GOLDEN_SHA256 = "5dfe852f986ae92a00e0e307ac76bf06b0e63d3d753cd52f7ee2e4fbb4f44f7a"

# The organism's language model: 4 layers, hidden 128, intermediate 384.
UNITS = {"gate_proj": 384, "up_proj": 384, "down_proj": 128}


def golden_expertise() -> Expertise:
    """Factors in [0, 1) for about 60% of the units of every MLP projection, the rest 1."""
    modules = {}
    for layer in range(4):
        for offset, (projection, units) in enumerate(UNITS.items()):
            values = [(unit * 7919 + layer * 31 + offset * 13) % 101 for unit in range(units)]
            alpha = torch.tensor(
                [value / 100 if value < 60 else 1.0 for value in values], dtype=torch.float32
            )
            name = f"model.language_model.layers.{layer}.mlp.{projection}"
            modules[name] = ModuleExpertise(name, "output", alpha)
    return Expertise(modules, {"rule": "golden"})


def test_the_organism_bake_is_byte_identical_to_the_golden_hash(tmp_path: Path) -> None:
    expertise = tmp_path / "golden.sgm"
    save_expertise(golden_expertise(), expertise)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["-q", "bake", "organism", str(out), "--expertise", str(expertise), "--no-verify"],
    )
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    source = Path(__file__).parents[2] / "sgm_bake" / "organism" / "weights" / "model.safetensors"
    assert digest != hashlib.sha256(source.read_bytes()).hexdigest()
    assert digest == GOLDEN_SHA256
