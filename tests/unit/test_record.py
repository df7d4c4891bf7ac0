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


# An evaluation and a tuning section as sgm-bake wrote them before the method knob, intervals and
# benign refusal: no `variants`, `method`, `by_method`, `intervals`, `refusal` or `eval_refusal`.
OLD_EVALUATION = {
    "report": "sgm/eval.json",
    "judge": "profanity (alt-profanity-check)",
    "prompt_set": {"name": "builtin:mmtoxicqa-organism-v1", "sha256": "a" * 64, "items": 40},
    "metrics": {
        "sgm-baked": {
            "harmful_rate": 0.05,
            "harmful_rate_by_condition": {"standard": 0.0, "adversarial": 0.1},
            "benign_accuracy": 0.75,
            "items": {"eliciting": 20, "benign": 20},
            "seconds": 3.5,
        },
        "base": {"harmful_rate": 0.5, "benign_accuracy": 0.8, "reference_perplexity": None},
    },
}
FIGURES = {"harm": 0.5, "kl": 0.0, "degenerate": 0.0, "accuracy": None, "harmful": 6, "prompts": 12}
TRIAL = {
    **FIGURES,
    "harm": 0.0,
    "kl": 0.03,
    "number": 2,
    "params": {"strength": 1.4},
    "setting": {"rule": "aura", "strength": 1.4},
    "feasible": True,
    "suppressed_units": 30,
    "seconds": 2.5,
}
OLD_TUNING = {
    "report": "sgm/tune.json",
    "knobs": ["strength"],
    "trials_run": 3,
    "chosen": TRIAL,
    "pareto": [TRIAL],
    "splits": {"seed": 0, "fractions": [0.5, 0.25, 0.25], "tune": {"toxic": 12, "non_toxic": 12}},
    "options": {"trials": 3, "max_kl": 0.1, "judge": "profanity (alt-profanity-check)"},
    "tuning_split": {"base": FIGURES, "chosen": {**FIGURES, "harm": 0.0, "kl": 0.03}},
    "report_split": {"base": FIGURES, "chosen": {**FIGURES, "harm": 0.1, "kl": 0.02}},
    "seconds": 40.0,
    "interrupted": False,
}


def test_an_older_evaluation_and_tuning_read_typed_and_are_written_back_unchanged():
    data = {**copy.deepcopy(RECORD), "evaluation": OLD_EVALUATION, "tuning": OLD_TUNING}
    record = parse_record(copy.deepcopy(data))
    baked = record.evaluation.metrics["sgm-baked"]
    assert baked.harmful_rate == 0.05 and baked.harmful_rate_by_condition["adversarial"] == 0.1
    assert baked.runs == 1 and baked.benign_refusal is None  # the defaults of absent figures
    assert list(record.evaluation.ordered()) == ["sgm-baked", "base"]
    assert record.evaluation.model_label() == "sgm-baked"  # the baked row under its old name
    tuning = record.tuning
    assert tuning.chosen is not None and tuning.chosen.number == 2 and tuning.chosen.kl == 0.03
    assert tuning.report_split.chosen.harm == 0.1 and tuning.report_split.base.eval_refusal is None
    assert list(tuning.splits.parts()) == ["tune"] and tuning.options.max_kl == 0.1
    assert tuning.method is None and tuning.by_method == {}
    written = record.to_dict()
    assert written["evaluation"] == OLD_EVALUATION and written["tuning"] == OLD_TUNING
    assert parse_record(written).to_dict() == written


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["base", "baked", "baked+ecso"], "baked"),
        (["base", "sgm-baked", "sgm*"], "sgm-baked"),  # the demo before the neutral names
        (["base", "model", "model+ecso"], "model"),  # an evaluation of a folder not baked
        (["base", "ecso"], None),
    ],
)
def test_the_model_row_is_found_under_current_and_legacy_names(labels, expected):
    evaluation = copy.deepcopy(OLD_EVALUATION)
    row = evaluation["metrics"].pop("sgm-baked")
    evaluation["metrics"] = {label: row for label in labels}
    record = parse_record({**copy.deepcopy(RECORD), "evaluation": evaluation})
    assert record.evaluation.model_label() == expected


def test_a_damaged_tuning_figure_is_named():
    tuning = copy.deepcopy(OLD_TUNING)
    tuning["report_split"]["chosen"]["kl"] = "small"
    with pytest.raises(SGMError, match=r"tuning\.report_split\.chosen\.kl must be a number"):
        parse_record({**copy.deepcopy(RECORD), "tuning": tuning})
    evaluation = copy.deepcopy(OLD_EVALUATION)
    evaluation["metrics"]["base"]["runs"] = "two"
    with pytest.raises(SGMError, match=r"evaluation\.metrics\.base\.runs must be an integer"):
        parse_record({**copy.deepcopy(RECORD), "evaluation": evaluation})
