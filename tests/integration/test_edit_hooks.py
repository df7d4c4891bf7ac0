"""The edit's hook reference on real tiny models: SGM factors and low-rank deltas as hooks give
the logits of the same factors and deltas folded into the weights (nn.Linear and GPT-2's Conv1D),
in whichever order the hooks are attached."""

from __future__ import annotations

import copy

import pytest
import torch

from sgm_bake.core.edit import LowRankDelta
from sgm_bake.core.edit_hooks import EditHooks, resolve_deltas
from sgm_bake.core.fold import TensorFold, unit_axis
from sgm_bake.core.hooks import SGMHooks, model_recipe, resolve_modules, runtime_weight
from sgm_bake.errors import SGMError
from tests.helpers import synthetic_deltas, synthetic_expertise
from tests.tiny_configs import build_tiny_model


def _deltas(model, seed: int, rank: int = 1) -> list[LowRankDelta]:
    return list(synthetic_deltas(model, seed, rank).values())


def _baked(model, expertise, deltas):
    """A copy of the model with the factors and deltas folded into its weights, the bake's way."""
    baked = copy.deepcopy(model)
    recipe = model_recipe(baked)
    folds: dict[str, tuple[torch.nn.Module, TensorFold]] = {}

    def fold_of(name: str, module: torch.nn.Module) -> TensorFold:
        if name not in folds:
            folds[name] = (module, TensorFold(tuple(module.weight.shape)))
        return folds[name][1]

    for name, module, units in resolve_modules(baked, expertise, recipe):
        axis = unit_axis(units.projection.layout, units.side)
        fold_of(name, module).scale_axis(axis, units.entry.alpha)
        if units.side == "output" and getattr(module, "bias", None) is not None:
            with torch.no_grad():
                module.bias.mul_(units.entry.alpha)
    for name, module, entry in resolve_deltas(baked, deltas, recipe):
        fold_of(name, module).add_low_rank(*entry.delta.stored(entry.projection.layout))
    with torch.no_grad():
        for module, fold in folds.values():
            module.weight.copy_(fold.fold(module.weight.detach()))
    return baked


@pytest.mark.parametrize(
    ("model_type", "rank"), [("llama", 1), ("gpt2", 1), ("llama", 4), ("gpt2", 3)]
)
def test_hooks_equal_the_folded_weights_in_either_order(model_type, rank):
    model = build_tiny_model(model_type)
    recipe = model_recipe(model)
    down = next(p for p in recipe.projections if p.kind in ("down", "fc_out"))
    expertise = synthetic_expertise(model, seed=1)
    extra = synthetic_expertise(model, (f"{down.name}:input",), seed=2)
    name = recipe.runtime_name(1, down)  # input factors here, output factors on layer 0
    expertise.modules[name] = extra.modules[name]
    deltas = _deltas(model, seed=3, rank=rank)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with SGMHooks(model, expertise), EditHooks(model, deltas):
            sgm_then_edit = model(input_ids=ids).logits
        with EditHooks(model, deltas), SGMHooks(model, expertise):
            edit_then_sgm = model(input_ids=ids).logits
        with EditHooks(model, deltas):
            edit_only = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        baked = _baked(model, expertise, deltas)(input_ids=ids).logits
        edit_baked = _baked(model, type(expertise)({}), deltas)(input_ids=ids).logits
    assert torch.equal(after, plain)  # removing the hooks restores the model exactly
    assert not torch.allclose(edit_only, plain, atol=1e-3)  # the deltas do something
    torch.testing.assert_close(sgm_then_edit, edit_then_sgm, rtol=0, atol=0)
    torch.testing.assert_close(baked, sgm_then_edit, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(edit_baked, edit_only, rtol=1e-4, atol=1e-5)


def test_edit_hooks_refuse_deltas_that_do_not_fit():
    model = build_tiny_model("llama")
    (first, *_) = _deltas(model, seed=0)
    wrong = LowRankDelta(first.module, first.v, first.u)  # out and in swapped
    with pytest.raises(SGMError, match="does not fit"):
        EditHooks(model, [wrong])
    attention = first.module.replace("mlp.down_proj", "self_attn.o_proj")
    with pytest.raises(SGMError, match="not a language-layer MLP projection"):
        EditHooks(model, [LowRankDelta(attention, first.u, first.u)])


def test_edit_hooks_refuse_stacked_experts():
    model = build_tiny_model("qwen3_vl_moe")
    recipe = model_recipe(model)
    stacked = next(p for p in recipe.projections if p.stacked and p.kind == "down")
    layers = recipe.layers(model.config.to_dict())
    name = next(
        recipe.runtime_name(layer, stacked)
        for layer in layers
        if runtime_weight(model, recipe, layer, stacked, recipe.runtime_prefixes[0])
    )
    with pytest.raises(SGMError, match="per-expert edits are not supported"):
        EditHooks(model, [LowRankDelta(name, torch.ones(4), torch.ones(4))])
