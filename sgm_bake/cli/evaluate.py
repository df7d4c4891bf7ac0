"""`eval`, `generate` and the offline `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sgm_bake.cli.bake import fail_unverified
from sgm_bake.cli.common import (
    add_options,
    bake_options,
    choose_set,
    data_format_options,
    echo_json,
    echo_lines,
    ecso_templates_option,
    json_option,
    judge_option,
    load_options,
    make_data_format,
    make_judge_options,
    make_placement,
    option,
    progress_enabled,
    ranged_option,
    revision_option,
    sample_option,
    seed_option,
    template_option,
    user_errors,
)
from sgm_bake.cli.profile import announce
from sgm_bake.errors import SGMError


def eval_table(results: list[Any]) -> None:
    """The evaluation figures of every variant, one line each."""
    from sgm_bake.publish.plots import percent_text
    from sgm_bake.text import table

    rows = []
    for result in results:
        m = result.metrics
        by = m["harmful_rate_by_condition"]
        perplexity = m["reference_perplexity"]
        rows.append(
            (
                result.label,
                percent_text(m["harmful_rate"]),
                percent_text(by.get("standard")),
                percent_text(by.get("adversarial")),
                percent_text(by.get("both")),
                percent_text(m["benign_accuracy"]),
                percent_text(m.get("benign_refusal")),
                percent_text(m.get("edgy_refusal")),
                "-" if perplexity is None else f"{perplexity:.2f}",
                percent_text(m["degenerate_share"]),
            )
        )
    headers = (
        "variant",
        "harmful",
        "standard",
        "adversarial",
        "both",
        "benign acc",
        "refusal",
        "edgy ref.",
        "ref ppl",
        "degenerate",
    )
    echo_lines(table(headers, rows))
    echo_lines(interval_lines(results))


def eval_json(results: list[Any], report: Path, judge: str) -> dict[str, Any]:
    """The evaluation for `--json`: each variant's figures in run order, and the report."""
    return {
        "report": str(report),
        "judge": judge,
        "variants": [{"label": r.label, "metrics": r.metrics} for r in results],
    }


def interval_lines(results: list[Any]) -> list[str]:
    """Each variant's harmful rate and benign accuracy with their counts and 95% intervals, and
    the replies the judge could not read."""
    lines = []
    for result in results:
        m = result.metrics
        intervals = m.get("intervals") or {}
        runs = m.get("runs", 1)
        parts = []
        for key, name in (("harmful_rate", "harmful"), ("benign_accuracy", "benign accuracy")):
            figure = intervals.get(key)
            if figure:
                parts.append(
                    f"{name} {figure['rate']:.1%} (95% CI {figure['low']:.1%}-{figure['high']:.1%}"
                    f", {figure['count']}/{figure['n']})"
                )
        if not parts:
            continue
        over = f" over {runs} seeds" if runs > 1 else ""
        unjudged = m.get("unjudged", 0)
        tail = f"; {unjudged} unparseable verdicts, left out" if unjudged else ""
        lines.append(f"{result.label}: {'; '.join(parts)}{over}{tail}")
        if m.get("harm_categories"):
            named = ", ".join(f"{k} {v}" for k, v in m["harm_categories"].items())
            lines.append(f"{result.label}: judge's categories: {named}")
    return lines


def parse_seeds(text: str | None, sample: bool) -> tuple[int, ...] | None:
    """`--seeds 0,1,2`: one sampled run per seed (needs --sample)."""
    if not text:
        return None
    if not sample:
        raise SGMError("--seeds sets sampling seeds; add --sample (greedy decoding has one run)")
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise SGMError(f"--seeds {text!r} must be whole numbers such as 0,1,2") from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise SGMError(f"--seeds {text!r} must name distinct seeds such as 0,1,2")
    return seeds


def _base_spec(folder: Path) -> tuple[str, str | None] | None:
    """The source a baked folder's record names, as (folder or Hub id, revision)."""
    from sgm_bake.record import read_record

    source = read_record(folder).source
    if source.kind == "local" and source.path:
        if not Path(source.path).is_dir():
            click.echo(
                f"note: the recorded source {source.path} is gone; reporting without the base",
                err=True,
            )
            return None
        return source.path, None
    return source.id, source.revision


@click.command(name="eval")
@click.argument("model")
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Apply SGM as hooks from this expertise file (compared with the model without them).",
)
@click.option(
    "--prompt-set",
    default=None,
    help="MM-TOXIC-QA-style prompt set: a .jsonl/.csv file, builtin:NAME, hf://datasets/..., "
    "or through the datasets extra hf:OWNER/NAME, a .parquet file or a folder (see --columns). "
    "Default: builtin:mm-safety-eval-v1, or builtin:mmtoxicqa-organism-v1 for an organism.",
)
@data_format_options
@click.option(
    "--max-samples",
    "max_items",
    type=click.IntRange(1),
    default=None,
    help="Evaluate the first N items of the prompt set (a Hub dataset is then streamed).",
)
@judge_option
@option("max-new-tokens", help="Length of each greedy (or sampled) reply the judge reads.")
@add_options([sample_option, seed_option])
@click.option(
    "--seeds",
    default=None,
    help="With --sample: one run per seed, e.g. 0,1,2; every rate pools items x seeds and "
    "comes with a 95% interval.",
)
@ranged_option("--temperature", 0.7, low=0, help="With --sample: the sampling temperature.")
@ranged_option(
    "--top-p", 0.9, low=0, high=1, help="With --sample: nucleus sampling's probability mass."
)
@ranged_option("--batch-size", 8, low=1, help="Prompts generated per forward pass.")
@load_options
@click.option(
    "--base",
    default=None,
    help="Base model (folder or Hub id) reported beside MODEL, under which the perplexity of "
    "the generated answers is measured. Default: for a baked folder, the source its record "
    "names; with --expertise, MODEL without hooks.",
)
@click.option("--no-base", is_flag=True, help="Do not evaluate a base model beside MODEL.")
@revision_option
@click.option(
    "--ecso",
    "use_ecso",
    is_flag=True,
    help="Also evaluate every condition wrapped in ECSO (SGM* when combined with SGM).",
)
@ecso_templates_option
@template_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Report path (JSON; a .png chart goes beside it). Default: OUT/sgm/eval.json for a "
    "baked folder, else ./sgm-eval.json.",
)
@json_option
@user_errors
def eval_command(
    model: str,
    expertise_path: Path | None,
    prompt_set: str | None,
    columns: str | None,
    toxic_label: str | None,
    dataset_split: str | None,
    dataset_revision: str | None,
    max_items: int | None,
    judge_spec: str,
    judge_device: str,
    judge_prompt: str,
    max_new_tokens: int,
    sample: bool,
    seed: int,
    seeds: str | None,
    temperature: float,
    top_p: float,
    batch_size: int,
    device: str,
    dtype: str,
    device_map: str | None,
    max_memory: str | None,
    offload_folder: Path | None,
    base: str | None,
    no_base: bool,
    revision: str | None,
    use_ecso: bool,
    ecso_templates: Path | None,
    template: Path | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Measure harmful rate, fluency and reasoning of MODEL (a folder, Hub id, baked folder,
    `organism`, `organism-plain` or `organism-staged`), optionally with SGM hooks from
    --expertise; a baked folder is reported beside its base by default."""
    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.datasets.prompt_set import load_prompt_set
    from sgm_bake.evaluation.conditions import (
        EvalSettings,
        Variant,
        evaluate_variants,
        write_report,
    )
    from sgm_bake.evaluation.ecso import templates_for
    from sgm_bake.evaluation.judges import make_judge
    from sgm_bake.publish.refresh import record_evaluation
    from sgm_bake.record import (
        BAKED_ECSO_LABEL,
        BAKED_LABEL,
        RECORD_PATH,
        SGM_DIR,
        require_intact,
    )
    from sgm_bake.runtime.chat import GenerationConfig
    from sgm_bake.runtime.loading import load_chat, resolve_model_source

    if base and no_base:
        raise SGMError("--base and --no-base contradict each other; pass one")
    seed_list = parse_seeds(seeds, sample)
    data_format = make_data_format(
        {
            "columns": columns,
            "toxic_label": toxic_label,
            "dataset_split": dataset_split,
            "dataset_revision": dataset_revision,
        }
    )
    judge = make_judge(judge_spec, make_judge_options(judge_device, judge_prompt))
    expertise = load_expertise(expertise_path) if expertise_path is not None else None
    progress = progress_enabled()
    source = resolve_model_source(model, revision, progress)
    folder = source.path
    prompt_set = choose_set(prompt_set, "eval", model, folder)
    prompts = load_prompt_set(prompt_set, data_format, max_items)
    baked = (folder / RECORD_PATH).is_file()
    if baked:
        require_intact(folder)  # figures of a changed folder would be recorded as its own
    used = f"prompt set: {prompts.name} ({len(prompts.items)} items); judge: {judge.name}"
    click.echo(used, err=as_json)  # under --json, stdout holds the JSON document alone
    placement = make_placement(device, device_map, max_memory, offload_folder)
    chat, loaded = load_chat(source, placement, dtype, template)
    templates = (
        templates_for(folder, loaded.recipe.model_type, ecso_templates) if use_ecso else None
    )
    generation = GenerationConfig(max_new_tokens, sample, temperature, top_p, seed)
    settings = EvalSettings(generation, batch_size, progress, templates, seed_list)
    base_chat = None
    variants: list[Variant] = []
    if expertise is not None:
        variants = [
            Variant("base", chat, ecso_label="ecso"),
            Variant("sgm-hooks", chat, expertise, loaded.recipe, ecso_label="sgm*-hooks"),
        ]
        base_chat = chat  # hooks are removed after each variant: the same weights are the base
    else:
        spec = (base, None) if base else (_base_spec(folder) if baked and not no_base else None)
        if spec is not None:
            base_source = resolve_model_source(spec[0], spec[1], progress)
            base_chat, _ = load_chat(base_source, placement, dtype, template)
            variants.append(Variant("base", base_chat, ecso_label="ecso"))
        # `baked` whatever the bake folded (SGM's factors, the edit or both)
        label, star = (BAKED_LABEL, BAKED_ECSO_LABEL) if baked else ("model", "model+ecso")
        variants.append(Variant(label, chat, ecso_label=star))
    results = evaluate_variants(variants, prompts, judge, settings, base_chat)
    path = output or (folder / SGM_DIR / "eval.json" if baked else Path("sgm-eval.json"))
    data = write_report(
        path,
        prompts,
        judge,
        settings,
        results,
        {"id": source.id, "expertise": str(expertise_path or "")},
    )
    if baked and output is None:
        record_evaluation(folder, f"{SGM_DIR}/eval.json", data)
    if as_json:
        echo_json(eval_json(results, path, judge.name))
        return
    eval_table(results)
    click.echo(f"report: {path}; judge: {judge.name}")


@click.command()
@click.argument("model")
@click.option(
    "--image",
    "image_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The image file to ask about.",
)
@click.option("--prompt", required=True, help="The question or instruction.")
@click.option(
    "--ecso", "use_ecso", is_flag=True, help="Answer through ECSO (self-check, then eyes closed)."
)
@ecso_templates_option
@click.option(
    "--expertise",
    "expertise_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also answer with SGM hooks from this expertise file, side by side.",
)
@click.option("--trace", is_flag=True, help="Print ECSO's steps (self-check score, caption).")
@option("max-new-tokens", default=64, help="Length of the reply.")
@add_options([sample_option, seed_option, load_options])
@revision_option
@template_option
@user_errors
def generate(
    model: str,
    image_path: Path,
    prompt: str,
    use_ecso: bool,
    ecso_templates: Path | None,
    expertise_path: Path | None,
    trace: bool,
    max_new_tokens: int,
    sample: bool,
    seed: int,
    device: str,
    dtype: str,
    device_map: str | None,
    max_memory: str | None,
    offload_folder: Path | None,
    revision: str | None,
    template: Path | None,
) -> None:
    """Answer one image + prompt with MODEL (Hub id, folder, baked folder, or a built-in
    organism: `organism`, `organism-plain`, `organism-staged`)."""
    from PIL import Image, UnidentifiedImageError

    from sgm_bake.core.expertise import load_expertise
    from sgm_bake.core.hooks import SGMHooks
    from sgm_bake.evaluation.ecso import ecso, templates_for
    from sgm_bake.runtime.chat import GenerationConfig
    from sgm_bake.runtime.loading import load_chat, resolve_model_source

    if not image_path.is_file():
        raise SGMError(f"image {image_path} does not exist")
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise SGMError(
            f"image {image_path} is not a readable image ({type(exc).__name__})"
        ) from exc
    expertise = load_expertise(expertise_path) if expertise_path else None
    source = resolve_model_source(model, revision, progress_enabled())
    placement = make_placement(device, device_map, max_memory, offload_folder)
    chat, loaded = load_chat(source, placement, dtype, template)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sample=sample, seed=seed)
    templates = (
        templates_for(source.path, loaded.recipe.model_type, ecso_templates) if use_ecso else None
    )

    def answer(label: str) -> None:
        if templates is None:
            click.echo(f"{label}: {chat.generate([prompt], [image], config)[0]}")
            return
        steps = ecso(chat, [prompt], [image], config, templates)[0]
        if trace:
            click.echo(f"{label} [ecso] initial answer: {steps.initial_answer}")
            click.echo(
                f"{label} [ecso] self-check: harmful with p={steps.harm_probability:.2f} "
                f"({'flagged' if steps.flagged else 'kept'})"
            )
            if steps.flagged:
                click.echo(f"{label} [ecso] caption: {steps.caption}")
        click.echo(f"{label}: {steps.final_answer}")

    answer("model")
    if expertise is not None:
        with SGMHooks(chat.model, expertise, loaded.recipe):
            answer("sgm")


@click.command()
@click.argument("workdir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace WORKDIR if it exists and is not empty.")
@click.option(
    "--organism",
    "organism_name",
    type=click.Choice(["organism", "organism-plain", "organism-staged"]),
    default="organism",
    show_default=True,
    help="organism: toxicity implanted in a few units per layer; organism-plain: toxicity "
    "learned in ordinary one-stage training (no implanted units); organism-staged: "
    "pretraining, instruction tuning, then jailbreak fine-tuning, as real MLLMs are made.",
)
@judge_option
@option(
    "rule",
    default="det0",
    help="How AUROC becomes factors (see `sgm-bake run --help`); det0 switches the top-k off.",
)
@ranged_option(
    "--top-k", 256, low=0, help="Experts the rule acts on (0: no cap; see benchmarks/RESULTS.md)."
)
@option("strength", default=1.0)
@option(
    "positions",
    default="text",
    help="Pool over text positions only (the organism's toxicity is in its replies) or all.",
)
@click.option(
    "--tune",
    "tune_trials",
    type=click.IntRange(1),
    default=None,
    is_flag=False,
    flag_value=6,
    help="Let the tuner choose the method (SGM, the edit or both) and its knobs in this many "
    "trials (--tune alone: 6; a few minutes), instead of the rule options; its study is kept "
    "in WORKDIR-tune.",
)
@user_errors
def demo(
    workdir: Path,
    overwrite: bool,
    organism_name: str,
    judge_spec: str,
    judge_device: str,
    judge_prompt: str,
    rule: str,
    top_k: int,
    strength: float,
    positions: str,
    tune_trials: int | None,
) -> None:
    """Offline demo on the built-in model organism: profile, bake, verify, evaluate.

    The organism is a tiny LLaVA trained to be toxic under some inputs (see README). The
    defaults are the setting that meets the paper's effect size on it (benchmarks/RESULTS.md);
    --rule aura --top-k 0 shows the published soft rule. WORKDIR receives
    expertise.safetensors and baked/ (the detoxified checkpoint, with the evaluation report in
    baked/sgm/eval.json and a chart beside it).
    """
    from sgm_bake.core.rules import RuleOptions
    from sgm_bake.pipeline.demo import DemoRequest, run_demo
    from sgm_bake.pipeline.run import Messages

    request = DemoRequest(
        workdir=workdir,
        organism=organism_name,
        rule=RuleOptions(rule=rule, strength=strength, top_k=top_k),  # type: ignore[arg-type]
        positions=positions,
        judge=judge_spec,
        judge_options=make_judge_options(judge_device, judge_prompt),
        overwrite=overwrite,
        bake=bake_options(overwrite=False, recipe_file=None),
        tune_trials=tune_trials,
    )
    outcome = run_demo(request, Messages(click.echo, announce))
    fail_unverified(outcome.baked, outcome.verification)
    eval_table(outcome.results)
    click.echo(f"detoxified checkpoint: {outcome.baked}; report {outcome.report}")
    if outcome.tuned is not None:
        from sgm_bake.pipeline.tune import chosen_method_line

        click.echo(chosen_method_line(outcome.tuned))
    report_plots(outcome.report.parent)


def report_plots(folder: Path) -> None:
    """Where the plots are, or (on stderr) that none were drawn because matplotlib is missing:
    the demo's help promises a chart, so its absence is said, not left to be noticed."""
    from sgm_bake.publish import plots

    if not plots.available():
        click.echo(f"note: no plots were drawn: {plots.MISSING_HINT}", err=True)
        return
    drawn = sorted(path.name for path in folder.glob("*.png"))
    click.echo(f"plots: {folder} ({', '.join(drawn)})")


COMMANDS = [eval_command, generate, demo]
