"""The one-command run (`sgm-bake MODEL OUT`: profile or reuse a profile, bake, layer check)
reads the source once: one opening of its checkpoint folder (config, index, safetensors
headers) and one resolution of its recipe, handed down from stage to stage. Counted with
wrappers around the two constructors every opening and every resolution goes through, so no
stage can open it again unseen. The bake record is handed on as the bake wrote it, never read
back from the file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sgm_bake.cli import main
from sgm_bake.core.recipes import Recipe
from sgm_bake.io.checkpoint import Checkpoint
from sgm_bake.record import parse_record, store
from tests.helpers import write_set


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [False, True], ids=["profile", "reused-profile"])
def test_the_run_opens_the_source_and_resolves_its_recipe_once(
    runner, llava_dir, llava_expertise, tmp_path, monkeypatch, reuse
):
    counts: Counter[str] = Counter()
    checkpoint_init, recipe_init = Checkpoint.__init__, Recipe.__init__

    def counted_checkpoint(self, root, *args, **kwargs):
        checkpoint_init(self, root, *args, **kwargs)
        counts["source" if Path(root).resolve() == llava_dir.resolve() else "other"] += 1

    def counted_recipe(self, *args, **kwargs):
        recipe_init(self, *args, **kwargs)
        counts["recipe"] += 1

    def counted_read(*args, **kwargs):
        counts["record"] += 1
        return parse_record(*args, **kwargs)

    monkeypatch.setattr(Checkpoint, "__init__", counted_checkpoint)
    monkeypatch.setattr(store, "parse_record", counted_read)
    monkeypatch.setattr(Recipe, "__init__", counted_recipe)
    arguments = [str(llava_dir), str(tmp_path / "out"), "--device", "cpu"]
    if reuse:
        arguments += ["--expertise", str(llava_expertise)]
    else:
        arguments += ["--profile-set", str(write_set(tmp_path / "set")), "--max-samples", "16"]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "verify: PASS" in result.output
    assert counts["source"] == 1, counts
    assert counts["recipe"] == 1, counts
    assert counts["other"] == 1, counts  # the baked folder, opened once by the layer check
    assert counts["record"] == 0, counts
