"""The bake record: validated on read, with errors that name the bad field."""

from __future__ import annotations

import copy

import pytest

from sgm_bake.errors import SGMError
from sgm_bake.record import LEGACY_FORMAT, RECORD_FORMAT, LayerCheck, parse_record

RECORD = {
    "record_format": RECORD_FORMAT,
    "tool": {"name": "sgm-bake", "version": "0.1.0"},
    "versions": {"torch": "2.13.0"},
    "source": {"id": "model", "kind": "local", "revision": None, "path": "/models/model"},
    "recipe": {
        "model_type": "llava",
        "file": "llava.json",
        "checkpoint_layout": "language_model.model.layers.{layer}",
        "layers": [0, 2],
        "definition": {"model_type": "llava"},
    },
    "format": {"source": "safetensors", "weight_files": ["model.safetensors"], "folded_dtypes": []},
    "expertise": {
        "metadata": {"rule": "aura"},
        "modules": {
            "model.language_model.layers.1.mlp.down_proj": {
                "layer": 1,
                "side": "output",
                "units": 64,
                "suppressed": 3,
                "zeroed": 0,
                "amplified": 0,
                "min_alpha": 0.5,
                "mean_alpha": 0.98,
            }
        },
        "tensors_folded": ["language_model.model.layers.1.mlp.down_proj.weight"],
    },
    "verification": {
        "passed": True,
        "inputs": "text",
        "samples": 3,
        "positions": 30,
        "max_abs_diff": 0.0,
        "max_rel_diff": 0.0,
        "top1_agreement": 1.0,
        "intervention_rel_effect": 0.1,
        "tolerance": 1e-4,
        "compute_dtype": "float32",
        "tensors_swapped": 1,
    },
    "files": {"model.safetensors": "0" * 64},
}


def test_a_valid_record_reads_typed():
    record = parse_record(copy.deepcopy(RECORD))
    assert record.expertise.modules["model.language_model.layers.1.mlp.down_proj"].units == 64
    assert record.expertise.suppressed == 3 and record.verification is not None
    assert record.verification.mode == "full"  # the default for records that predate the field


def test_a_record_of_sgm_bake_0_1_reads_and_is_upgraded():
    legacy = copy.deepcopy(RECORD)
    del legacy["record_format"]
    record = parse_record(legacy)
    assert record.record_format == RECORD_FORMAT != LEGACY_FORMAT


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("verification", "passed"), "yes", "verification.passed must be true or false"),
        (("expertise", "modules"), [], "expertise.modules must be an object"),
        (("recipe", "layers"), "0-2", "recipe.layers must be a list"),
        (("tool",), None, "tool must be an object"),
        (("record_format",), "sgm-bake-record/99", "record format 'sgm-bake-record/99'"),
    ],
)
def test_a_damaged_field_is_named(path, value, message):
    data = copy.deepcopy(RECORD)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SGMError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_record(data)


def test_a_missing_field_is_named():
    data = copy.deepcopy(RECORD)
    del data["expertise"]["tensors_folded"]
    with pytest.raises(SGMError, match=r"expertise\.tensors_folded is missing"):
        parse_record(data)


def test_per_layer_verification_entries_are_typed_and_checked():
    data = copy.deepcopy(RECORD)
    entry = {
        "layer": 1,
        "block": "mlp",
        "max_rel_diff": 1e-7,
        "worst_module": "mlp.down_proj",
        "block_rel_diff": 1e-7,
        "block_abs_diff": 1e-8,
        "intervention_rel_effect": 0.2,
        "passed": True,
    }
    data["verification"] = {**data["verification"], "mode": "layers", "layers": [entry]}
    (check,) = parse_record(data).verification.layers
    assert isinstance(check, LayerCheck) and check.layer == 1 and check.passed
    data["verification"]["layers"] = [{**entry, "passed": "yes"}]
    with pytest.raises(SGMError, match=r"verification\.layers\[0\]\.passed must be true or false"):
        parse_record(data)
