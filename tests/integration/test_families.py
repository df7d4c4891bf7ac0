"""Every recipe family: bake a tiny random model and check it against the hook reference.

For each family the tiny model is built from its transformers config, saved with
`save_pretrained` (so the checkpoint keys are whatever transformers writes for that family),
baked with random factors on the recipe's default hook points plus the inputs of the down
projection, and verified: only the targeted tensors differ, the output reloads with the family's
Auto class without missing or unexpected keys, and baked logits equal hooked logits.
"""

from __future__ import annotations

import pytest
import torch

from sgm_bake.core.hooks import model_recipe
from sgm_bake.core.recipes import available_recipes
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.bake import BakeOptions, bake
from sgm_bake.pipeline.verify import verify
from sgm_bake.runtime.loading import CPU, load_model
from tests.helpers import load_state, synthetic_expertise
from tests.tiny_configs import TINY_FAMILIES


def test_every_recipe_has_a_tiny_model():
    assert set(available_recipes()) == set(TINY_FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(TINY_FAMILIES))
def test_family_bakes_exactly(model_type, tiny_family, tmp_path):
    model, source = tiny_family(model_type)
    recipe = model_recipe(model)
    expertise = synthetic_expertise(model, seed=4, share=0.5)
    # The input side of every down projection of the last layer (dense, shared expert and
    # stacked experts where the layer has them).
    last_layer = recipe.layers(model.config.to_dict())[-1]
    neuron_points = tuple(str(point) for point in recipe.neuron_hook_points)
    inputs = synthetic_expertise(model, neuron_points, seed=5, share=0.5)
    for name, entry in inputs.modules.items():
        parsed = recipe.parse_module(name)
        if parsed is not None and parsed[0] == last_layer:
            expertise.modules[name] = entry

    out = tmp_path / "out"
    record = bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    before, after = load_state(source), load_state(out)
    assert before.keys() == after.keys()
    targeted = set(record.expertise.tensors_folded)
    assert targeted
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and after[key].shape == tensor.shape
        assert torch.equal(after[key], tensor) == (key not in targeted), key

    report = verify(out, source, placement=CPU)
    assert report.passed, report.summary()
    assert report.max_abs_diff <= 1e-4
    assert report.tensors_swapped >= len(targeted)

    reloaded = load_model(out, recipe, torch.float32, CPU)
    assert reloaded is not None
    import transformers
    from transformers import AutoConfig

    auto = getattr(transformers, recipe.auto_class)
    _, info = auto.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert AutoConfig.from_pretrained(out).model_type == model_type
