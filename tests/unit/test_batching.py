"""How profiling batches: the automatic batch size's choice from measured memory, and the
`--batch-size` option."""

from __future__ import annotations

import click
import pytest

from sgm_bake.cli.common import BatchSize
from sgm_bake.pipeline.profile import DEFAULT_BATCH_SIZE, fixed_batch_size, predicted_batch


def test_predicted_batch_is_the_largest_power_of_two_that_fits():
    # 50 bytes fixed + 50 per sample: 16 samples need 850, 32 need 1650.
    assert predicted_batch({0: 100}, {0: 150}, {0: 1000.0}, 64) == 16
    assert predicted_batch({0: 100}, {0: 150}, {0: 1e9}, 64) == 64  # capped
    assert predicted_batch({0: 100}, {0: 150}, {0: 1e9}, 48) == 32  # powers of two only
    assert predicted_batch({0: 100}, {0: 150}, {0: 10.0}, 64) == 2  # both probes ran
    # Several GPUs: the fullest decides.
    assert predicted_batch({0: 100, 1: 10}, {0: 150, 1: 20}, {0: 1e9, 1: 170.0}, 64) == 16


def test_batch_size_option_and_its_default():
    option = BatchSize()
    assert option.convert("auto", None, None) == "auto"
    assert option.convert("AUTO", None, None) == "auto"
    assert option.convert("16", None, None) == 16
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(click.BadParameter):
            option.convert(bad, None, None)
    assert fixed_batch_size("auto") == DEFAULT_BATCH_SIZE == 8
    assert fixed_batch_size(3) == 3


def test_an_interrupted_automatic_run_resumes_with_its_recorded_batch_size(tmp_path):
    import json

    from sgm_bake.pipeline.profile import recorded_batch_size

    unsized = {"source": "m", "samples": 40, "batch_size": "auto", "order": "length-v1"}
    assert recorded_batch_size(tmp_path, unsized) is None  # no store yet
    recorded = {**unsized, "batch_size": 32, "share": [0, 32], "rank": 0, "world_size": 2}
    (tmp_path / "meta.json").write_text(json.dumps({"fingerprint": recorded}))
    assert recorded_batch_size(tmp_path, unsized) == 32
    assert recorded_batch_size(tmp_path, {**unsized, "samples": 41}) is None  # another profile
    (tmp_path / "meta.json").write_text("{not json")
    assert recorded_batch_size(tmp_path, unsized) is None


def test_max_pooling_in_half_precision_equals_pooling_widened():
    import torch

    from sgm_bake.core.capture import pool

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 7, 5, generator=generator).to(torch.bfloat16)
    mask = torch.rand(3, 7, generator=generator) > 0.3
    mask[:, 0] = True
    assert pool(values, mask, "max").dtype == torch.float32
    assert torch.equal(pool(values, mask, "max"), pool(values.float(), mask, "max"))
