"""Mixture-of-experts families: expert units hooked, baked, verified and profiled exactly.

Every MoE family gets a tiny model (4 experts; dense layers beside MoE layers where the family
has them) saved in each checkpoint layout the family is published in: stacked expert tensors (in
either orientation) or per-expert `experts.{e}.gate_proj/up_proj/down_proj` weights, which
transformers stacks at load time.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sgm_bake.core.capture import Capture, ExpertTarget
from sgm_bake.core.expertise import Expertise, ModuleExpertise
from sgm_bake.core.hooks import SGMHooks, model_recipe, patch_experts, runtime_weight
from sgm_bake.core.recipes import Recipe
from sgm_bake.core.rules import RuleOptions
from sgm_bake.datasets.profile_set import ProfileSample, ProfileSet
from sgm_bake.io.response_store import ResponseStore
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.bake import BakeOptions, bake
from sgm_bake.pipeline.profile import (
    ProfileOptions,
    capture_responses,
    expertise_from_store,
    profile_targets,
)
from sgm_bake.pipeline.verify import verify
from sgm_bake.runtime.loading import CPU
from tests.helpers import file_metadata, load_state, synthetic_expertise
from tests.tiny_configs import MOE_FAMILIES, TINY_FAMILIES, build_tiny_model

# Checkpoint layouts each family is published in (and transformers loads): "saved" is what
# save_pretrained writes; "stacked" stacks per-expert weights; "transposed" stores stacked
# experts as [E, in, out] (Qwen3-VL-MoE on the Hub, transposed by transformers at load).
LAYOUTS = {
    "qwen3_vl_moe": ("saved", "transposed"),
    "qwen3_5_moe": ("saved", "stacked"),
    "glm4v_moe": ("saved", "stacked"),
    "llama4": ("saved",),
    "gemma4_moe": ("saved",),
    "aria": ("saved",),
    "kimi_k25": ("saved", "stacked"),
    "qwen3_omni_moe_thinker": ("saved", "stacked"),
}
PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _restack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert weights -> stacked gate_up_proj [E, 2I, H] and down_proj [E, H, I]."""
    parts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    out = {}
    for key, tensor in state.items():
        match = PER_EXPERT.match(key)
        if match is None:
            out[key] = tensor
            continue
        prefix, expert, leaf = match.groups()
        parts.setdefault(prefix, {}).setdefault(leaf, {})[int(expert)] = tensor
    for prefix, leaves in parts.items():
        experts = sorted(leaves["down_proj"])
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([leaves["gate_proj"][e], leaves["up_proj"][e]]) for e in experts]
        )
        out[f"{prefix}.down_proj"] = torch.stack([leaves["down_proj"][e] for e in experts])
    return out


def _transpose_stacked(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key: tensor.transpose(1, 2).contiguous()
        if key.endswith(("experts.gate_up_proj", "experts.down_proj"))
        else tensor
        for key, tensor in state.items()
    }


def save_in_layout(model: Any, folder: Path, layout: str) -> Path:
    """Save `model` with save_pretrained, then rewrite its weights in `layout`."""
    model.save_pretrained(folder)
    if layout == "saved":
        return folder
    path = folder / "model.safetensors"
    state = load_state(folder)
    converted = _restack(state) if layout == "stacked" else _transpose_stacked(state)
    assert converted.keys() != state.keys() or any(
        converted[k].shape != state[k].shape for k in state
    ), f"layout {layout} changed nothing"
    save_file(converted, str(path), metadata=file_metadata(path))
    return folder


def _both_sides_expertise(model: Any, seed: int) -> Expertise:
    """Random factors on every default hook point, with the last layer's down projections
    (dense, shared and stacked experts) on their input side instead."""
    recipe = model_recipe(model)
    expertise = synthetic_expertise(model, seed=seed, share=0.5)
    last_layer = recipe.layers(model.config.to_dict())[-1]
    points = tuple(str(point) for point in recipe.neuron_hook_points)
    inputs = synthetic_expertise(model, points, seed=seed + 1, share=0.5)
    for name, entry in inputs.modules.items():
        parsed = recipe.parse_module(name)
        if parsed is not None and parsed[0] == last_layer:
            expertise.modules[name] = entry
    assert any(entry.alpha.ndim == 2 for entry in expertise.modules.values())
    return expertise


def _experts_modules(model: Any, recipe: Recipe) -> list[tuple[int, torch.nn.Module, str]]:
    """(layer, experts module, block path) of every layer that holds stacked experts."""
    found = []
    gate_up = next(p for p in recipe.projections if p.stacked and p.kind == "gate_up")
    template = recipe.runtime_prefixes[0]
    for layer in recipe.layers(model.config.to_dict()):
        hit = runtime_weight(model, recipe, layer, gate_up, template)
        if hit is not None:
            found.append((layer, hit[0], gate_up.group))
    assert found, "the tiny model has no MoE layer"
    return found


def _reference_experts(
    module: torch.nn.Module, recipe: Recipe, args: tuple[Any, ...], factors: dict[Any, Any]
) -> torch.Tensor:
    """The experts module written token by token from its weights, independently of
    core.experts: expert e's projection outputs (inputs) are multiplied by factors[e]."""
    gate_up_projection = next(p for p in recipe.projections if p.stacked and p.kind == "gate_up")
    down_projection = next(p for p in recipe.projections if p.stacked and p.kind == "down")

    def matrix(weight: torch.Tensor, expert: int, layout: str) -> torch.Tensor:
        return weight[expert] if layout == "out_in" else weight[expert].T  # [out, in]

    def factor(kind: str, side: str, expert: int, size: int) -> torch.Tensor:
        value = factors.get((kind, side))
        return torch.ones(size) if value is None else value[expert]

    def run(expert: int, token: torch.Tensor) -> torch.Tensor:
        gate_up = matrix(module.gate_up_proj, expert, gate_up_projection.layout)
        down = matrix(module.down_proj, expert, down_projection.layout)
        x = token * factor("gate_up", "input", expert, token.numel())
        projected = (gate_up @ x) * factor("gate_up", "output", expert, gate_up.shape[0])
        half = projected.numel() // 2
        hidden = module.act_fn(projected[:half]) * projected[half:]
        hidden = hidden * factor("down", "input", expert, hidden.numel())
        return (down @ hidden) * factor("down", "output", expert, down.shape[0])

    assert recipe.experts is not None
    if recipe.experts.routing == "prescaled":
        (inputs,) = args
        experts = module.gate_up_proj.shape[0]
        rows = inputs.view(experts, -1, inputs.shape[-1])
        return torch.cat(
            [
                torch.stack([run(e, rows[e, t]) for t in range(rows.shape[1])])
                for e in range(experts)
            ]
        )
    hidden_states, top_k_index, top_k_weights = args
    out = torch.zeros_like(hidden_states)
    for token in range(hidden_states.shape[0]):
        for slot in range(top_k_index.shape[1]):
            expert = int(top_k_index[token, slot])
            out[token] += top_k_weights[token, slot] * run(expert, hidden_states[token])
    return out


def _experts_call(model: Any, module: torch.nn.Module) -> tuple[Any, ...]:
    """The arguments the experts module receives in a real forward pass."""
    seen: list[tuple[Any, ...]] = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args))
    ids = torch.randint(10, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            _language_forward(model, ids)
    finally:
        handle.remove()
    assert seen
    return tuple(a.detach().clone() for a in seen[0])


def _language_forward(model: Any, ids: torch.Tensor) -> Any:
    recipe = model_recipe(model)
    runner = model.get_submodule(recipe.text_forward) if recipe.text_forward else model
    return runner(input_ids=ids, attention_mask=torch.ones_like(ids))


@pytest.mark.slow
@pytest.mark.parametrize("name", MOE_FAMILIES)
@pytest.mark.parametrize(
    "sides", [("output", "input"), ("input", "output")], ids=["gu-out", "gu-in"]
)
def test_expert_hooks_equal_an_independent_loop(name, sides):
    model = build_tiny_model(name, seed=1)
    recipe = model_recipe(model)
    layer, module, group = _experts_modules(model, recipe)[-1]
    args = _experts_call(model, module)
    with torch.no_grad():
        original = module(*args)
        # Expert by expert without factors: the same as the family's own implementation.
        patch = patch_experts(recipe, module, group)
        try:
            torch.testing.assert_close(module(*args), original, rtol=1e-5, atol=1e-6)
        finally:
            patch.remove()
        assert "forward" not in module.__dict__

    generator = torch.Generator().manual_seed(2)
    factors: dict[tuple[str, str], torch.Tensor] = {}
    modules = {}
    for kind, side in zip(("gate_up", "down"), sides, strict=True):
        projection = next(p for p in recipe.projections if p.group == group and p.kind == kind)
        weight = getattr(module, projection.parameter_name)
        axis = (1 if projection.layout == "out_in" else 2) if side == "output" else None
        if axis is None:
            axis = 2 if projection.layout == "out_in" else 1
        alpha = torch.rand(weight.shape[0], weight.shape[axis], generator=generator)
        factors[(kind, side)] = alpha
        module_name = recipe.runtime_name(layer, projection)
        modules[module_name] = ModuleExpertise(module_name, side, alpha)  # type: ignore[arg-type]
    with torch.no_grad(), SGMHooks(model, Expertise(modules)):
        hooked = module(*args)
    expected = _reference_experts(module, recipe, args, factors)
    torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(hooked, original, atol=1e-6), "the factors changed nothing"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layout"),
    [
        (name, layout)
        for name in MOE_FAMILIES
        for layout in LAYOUTS[name]
        # test_families covers the layout save_pretrained writes for every recipe family
        if layout != "saved" or name not in TINY_FAMILIES
    ],
)
def test_moe_bake_equals_hooks(name, layout, tmp_path):
    import transformers

    model = build_tiny_model(name, seed=3)
    source = save_in_layout(model, tmp_path / "source", layout)
    expertise = _both_sides_expertise(model, seed=4)

    out = tmp_path / "out"
    record = bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    before, after = load_state(source), load_state(out)
    assert before.keys() == after.keys()
    targeted = set(record.expertise.tensors_folded)
    assert any("experts" in key for key in targeted)
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and after[key].shape == tensor.shape
        assert torch.equal(after[key], tensor) == (key not in targeted), key

    report = verify(out, source, placement=CPU)
    assert report.passed and report.max_rel_diff <= 1e-4, report.summary()
    assert report.intervention_rel_effect > 1e-3
    auto = getattr(transformers, model_recipe(model).auto_class)
    _, info = auto.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def _refold_with_wrong_experts(out: Path, source: Path, expertise: Expertise) -> None:
    """Overwrite the baked expert tensors with the source folded by expert e+1's factors."""
    rolled = Expertise(
        {
            name: ModuleExpertise(name, e.side, torch.roll(e.alpha, 1, dims=0), e.auroc)
            if e.alpha.ndim == 2
            else e
            for name, e in expertise.modules.items()
        }
    )
    wrong = out.parent / "wrong"
    bake(resolve_source(str(source)), wrong, rolled, BakeOptions(progress=False))
    path = out / "model.safetensors"
    state = load_state(out)
    state.update({k: v for k, v in load_state(wrong).items() if "experts" in k})
    save_file(state, str(path), metadata=file_metadata(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layout"), [("qwen3_vl_moe", "transposed"), ("glm4v_moe", "saved")]
)
def test_verification_catches_a_wrong_expert_fold(name, layout, tmp_path):
    model = build_tiny_model(name, seed=3)
    source = save_in_layout(model, tmp_path / "source", layout)
    expertise = _both_sides_expertise(model, seed=6)
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    # The correct bake of these layouts passes (test_moe_bake_equals_hooks, test_families).
    _refold_with_wrong_experts(out, source, expertise)
    report = verify(out, source, placement=CPU, record=False)
    assert not report.passed, report.summary()


@pytest.mark.slow
def test_bf16_experts_round_once(tmp_path):
    model = build_tiny_model("qwen3_vl_moe", seed=3).to(torch.bfloat16)
    source = save_in_layout(model, tmp_path / "source", "transposed")
    name = "model.language_model.layers.1.mlp.experts.gate_up_proj"
    alpha = torch.rand(4, 48, generator=torch.Generator().manual_seed(0))
    expertise = Expertise({name: ModuleExpertise(name, "output", alpha)})
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    stored = load_state(source)[name]  # [E, H, 2I]: the units are the last axis
    expected = (stored.float() * alpha[:, None, :]).to(torch.bfloat16)
    assert torch.equal(load_state(out)[name], expected)
    assert verify(out, source, placement=CPU, record=False).passed


def _mllama_with_a_pre_fusion_factor(tmp_path: Path) -> tuple[Any, Path, Any]:
    """A tiny Mllama saved in tmp_path/source, with factors that include layer 0's up_proj,
    before the first cross-attention layer."""
    model = build_tiny_model("mllama", seed=3)
    source = tmp_path / "source"
    model.save_pretrained(source)
    expertise = synthetic_expertise(model, seed=1, share=0.5)
    name = "model.language_model.layers.0.mlp.up_proj"
    alpha = torch.rand(model.get_submodule(name).weight.shape[0])
    expertise.modules[name] = ModuleExpertise(name, "output", alpha)
    return model, source, expertise


@pytest.mark.slow
def test_pre_fusion_layers_bake_with_a_warning(tmp_path, caplog):
    model, source, expertise = _mllama_with_a_pre_fusion_factor(tmp_path)
    assert model_recipe(model).layers(model.config.to_dict()).start == 1
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="sgm_bake.core.expertise"):
        record = bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    assert "layers [0], before layer 1, the first cross-attention layer" in caplog.text
    assert (
        "language_model.model.layers.0.mlp.up_proj.weight"
        in "".join(record.expertise.tensors_folded)
        or "model.language_model.layers.0.mlp.up_proj.weight" in record.expertise.tensors_folded
    )
    assert verify(out, source, placement=CPU, record=False).passed


# --- Profiling ------------------------------------------------------------------------------

TRIGGER = 100
PLANTED_EXPERT = 2
PLANTED_UNIT = 5


class TokenInputs:
    """Samples whose text is a space-separated list of token ids (the tiny models have no
    tokenizer); the same interface as the profile step's Inputs."""

    def build(self, samples: list[ProfileSample]) -> dict[str, torch.Tensor]:
        rows = [[int(t) for t in sample.text.split()] for sample in samples]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row) :] = torch.tensor(row)  # left padding
            mask[index, width - len(row) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def mask(self, batch: dict[str, torch.Tensor], positions: str) -> torch.Tensor:
        return batch["attention_mask"].to(torch.bool)


def _planted_model() -> Any:
    """qwen3_vl_moe whose expert 2 has a gate unit that fires on the trigger token."""
    model = build_tiny_model("qwen3_vl_moe", seed=5)
    generator = torch.Generator().manual_seed(7)
    direction = torch.randn(32, generator=generator)
    direction /= direction.norm()
    layer = model.model.language_model.layers[1]
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[TRIGGER] = 3.0 * direction
        layer.mlp.gate.weight[PLANTED_EXPERT] = 2.0 * direction
        layer.mlp.experts.gate_up_proj[PLANTED_EXPERT, PLANTED_UNIT] = 5.0 * direction
    return model


def _samples(count: int) -> ProfileSet:
    generator = torch.Generator().manual_seed(11)
    samples = []
    for index in range(count):
        length = int(torch.randint(6, 12, (1,), generator=generator))
        tokens = torch.randint(10, 200, (length,), generator=generator)
        tokens[tokens == TRIGGER] = TRIGGER + 1
        toxic = index % 2
        if toxic:
            where = torch.randperm(length, generator=generator)[:2]
            tokens[where] = TRIGGER
        text = " ".join(str(int(t)) for t in tokens)
        samples.append(ProfileSample(f"s{index}", toxic, text))
    return ProfileSet("planted", "0" * 64, tuple(samples))


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_profiling_finds_planted_expert_units(pooling, tmp_path):
    model = _planted_model()
    recipe = model_recipe(model)
    options = ProfileOptions(pooling=pooling, batch_size=8, progress=False)
    targets = profile_targets(model, recipe, options)
    assert {t.name for t in targets if t.stacked} == {
        "model.language_model.layers.1.mlp.experts.gate_up_proj",
        "model.language_model.layers.1.mlp.experts.down_proj",
    }
    profile_set = _samples(40)
    store = ResponseStore.open(
        tmp_path / "responses", {"test": pooling}, {t.name: t.units for t in targets}, 40
    )
    capture_responses(
        model,
        TokenInputs(),  # type: ignore[arg-type]
        profile_set,
        targets,
        options,
        store,
        torch.device("cpu"),
        torch.float32,
        recipe,
    )
    rule = RuleOptions(rule="det0", top_k=1)
    scores, alphas = expertise_from_store(store, targets, profile_set.labels, rule)
    store.close()
    by_name = {
        t.name: (score, alpha) for t, score, alpha in zip(targets, scores, alphas, strict=True)
    }
    score, alpha = by_name["model.language_model.layers.1.mlp.experts.gate_up_proj"]
    assert score.shape == alpha.shape == (4, 48)
    assert float(score[PLANTED_EXPERT, PLANTED_UNIT]) == 1.0
    assert alpha[PLANTED_EXPERT, PLANTED_UNIT] == 0
    zeroed = sum(int((a == 0).sum()) for a in alphas)
    assert zeroed == 1, "top-1 across dense and expert units picks the planted unit alone"


def test_expert_responses_pool_over_routed_tokens_only():
    model = build_tiny_model("qwen3_vl_moe", seed=5)
    recipe = model_recipe(model)
    layer = model.model.language_model.layers[1]
    routes: list[torch.Tensor] = []
    handle = layer.mlp.gate.register_forward_hook(lambda _, __, out: routes.append(out[2]))
    ids = torch.randint(10, 200, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :5] = False  # sample 1 pools over its last token only
    name = "model.language_model.layers.1.mlp.experts.down_proj"
    target = ExpertTarget(name, "down", "input", 4, 24)

    def patch(module: torch.nn.Module, tap: Any) -> Any:
        return patch_experts(recipe, module, "mlp.experts", tap=tap)

    with Capture([], "mean", [(layer.mlp.experts, [target])], patch) as capture:
        pooled = capture.collect(mask, lambda: model(input_ids=ids))[name].view(2, 4, 24)
    handle.remove()
    routed = set(routes[0].view(2, 6, -1)[1, 5].tolist())
    assert len(routed) == 2
    for expert in range(4):
        assert bool((pooled[1, expert] != 0).any()) == (expert in routed)


@pytest.mark.slow
def test_unbake_rebuilds_expert_weights(tmp_path):
    from sgm_bake.pipeline.audit import unbake

    model = build_tiny_model("glm4v_moe", seed=3)
    source = save_in_layout(model, tmp_path / "source", "saved")
    expertise = synthetic_expertise(model, seed=8, share=0.5)
    for entry in expertise.modules.values():
        entry.alpha.clamp_(min=0.05)  # a factor of 0 erases a unit for good
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    result = unbake(out, tmp_path / "rebuilt", progress=False, compare_with=source)
    assert any(".experts.3.up_proj" in key for key in result["tensors_rebuilt"])
    check = result["compare"]
    assert check["within_bound"] and check["others_identical"], check


# --- square expert matrices: 2 x moe_intermediate_size == hidden_size -------------------------


def _square_moe(seed: int) -> Any:
    """Qwen3-VL-MoE whose gate_up matrices are square ([E, 32, 32]): their shape cannot tell
    [E, out, in] from [E, in, out]; down_proj's ([E, 32, 16]) can."""
    from transformers import AutoModelForImageTextToText

    from tests.tiny_configs import seed_everything, tiny_config

    config = tiny_config("qwen3_vl_moe")
    config.text_config.moe_intermediate_size = config.text_config.hidden_size // 2
    seed_everything(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    return model.float().eval()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["saved", "transposed"])
def test_a_square_expert_matrix_takes_the_orientation_of_its_layer(layout, tmp_path):
    """The orientation of the square gate_up tensor is read from down_proj of the same layer:
    its output units are the rows of each expert matrix as saved ([E, 2I, H]), the columns as
    the Hub ships Qwen3-VL-MoE ([E, H, 2I], `transposed`)."""
    model = _square_moe(seed=3)
    source = save_in_layout(model, tmp_path / "source", layout)
    name = "model.language_model.layers.1.mlp.experts.gate_up_proj"
    alpha = torch.rand(4, 32, generator=torch.Generator().manual_seed(0))
    expertise = Expertise({name: ModuleExpertise(name, "output", alpha)})
    out = tmp_path / "out"
    bake(resolve_source(str(source)), out, expertise, BakeOptions(progress=False))
    stored = load_state(source)[name]
    expected = stored * (alpha[:, :, None] if layout == "saved" else alpha[:, None, :])
    assert torch.equal(load_state(out)[name], expected)
    if layout == "saved":  # transformers 5.25 loads a square [E, H, 2I] without transposing it
        assert verify(out, source, placement=CPU, record=False).passed


def _split_down_proj(folder: Path) -> None:
    """Store every layer's down_proj per expert, leaving the square gate_up stacked alone."""
    path = folder / "model.safetensors"
    state = load_state(folder)
    for key in [k for k in state if k.endswith("experts.down_proj")]:
        stacked = state.pop(key)
        for expert in range(stacked.shape[0]):
            state[f"{key[: -len('down_proj')]}{expert}.down_proj.weight"] = stacked[expert]
    save_file(state, str(path), metadata=file_metadata(path))


@pytest.mark.slow
def test_a_square_expert_matrix_without_evidence_is_refused_naming_the_option(runner, tmp_path):
    from sgm_bake.cli import main
    from sgm_bake.core.expertise import load_expertise, save_expertise

    model = _square_moe(seed=5)
    source = save_in_layout(model, tmp_path / "source", "saved")
    _split_down_proj(source)
    save_expertise(_both_sides_expertise(model, seed=6), tmp_path / "expertise.safetensors")
    out = tmp_path / "out"
    command = ["-q", "bake", str(source), str(out)]
    command += ["--expertise", str(tmp_path / "expertise.safetensors")]
    result = runner.invoke(main, command)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "--expert-layout" in result.output
    assert "gate_up_proj" in result.output and not out.exists()
    result = runner.invoke(main, [*command, "--expert-layout", "in_out", "--no-verify"])
    assert result.exit_code == 0, result.output
    name = "model.language_model.layers.1.mlp.experts.gate_up_proj"
    alpha = load_expertise(tmp_path / "expertise.safetensors").modules[name].alpha
    expected = load_state(source)[name] * alpha[:, None, :]  # as declared: [E, in, out]
    assert torch.equal(load_state(out)[name], expected)
    recorded = json.loads((out / "sgm" / "bake.json").read_text())["recipe"]["definition"]
    assert recorded["experts"]["checkpoint_layout"] == "in_out"  # verify and unbake use it too


@pytest.mark.slow
def test_pre_fusion_layers_pass_every_step_with_the_same_warning(runner, tmp_path):
    """The one rule for every family and step: Mllama's layer 0 (before the first cross-attention
    layer) is baked, verified layer by layer and hooked, each time with the same warning."""
    from sgm_bake.cli import main
    from sgm_bake.core.expertise import save_expertise

    model, source, expertise = _mllama_with_a_pre_fusion_factor(tmp_path)
    save_expertise(expertise, tmp_path / "expertise.safetensors")
    out = tmp_path / "out"
    command = [
        "bake",
        str(source),
        str(out),
        "--expertise",
        str(tmp_path / "expertise.safetensors"),
    ]
    result = runner.invoke(main, command)
    assert result.exit_code == 0, result.output
    warning = "layers [0], before layer 1, the first cross-attention layer (where the image enters)"
    assert result.output.count(warning) == 2  # the bake and the layer-by-layer verification
    assert "PASS" in result.output
    with SGMHooks(model, expertise):  # the runtime form takes it too
        pass
