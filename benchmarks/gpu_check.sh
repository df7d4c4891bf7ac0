#!/usr/bin/env bash
# The README's commands at real size on a GPU, in one short run (about 5 minutes on one H200):
# a random bf16 checkpoint shaped exactly like llava-hf/llava-1.5-7b-hf (three shards, built on
# the GPU from benchmarks/model_configs/llava-1.5-7b, with a working tokenizer and processor),
# then
#   1. the one-command form on builtin:default (all 480 samples, --batch-size auto);
#   2. verify --full (float32, the default);
#   3. profile in one process, under torchrun, and with a device map that offloads to the CPU:
#      the three expertise files must be byte-identical (a second torchrun rank on a one-GPU
#      machine must be refused in one line, exit 2);
#   4. eval --no-base on a few items;
#   5. plan, against the peaks the records measured;
# and prints a summary of the figures for benchmarks/RESULTS.md. Any failed step stops the run
# with a non-zero exit.
#
#   bash benchmarks/gpu_check.sh                          # 7B on cuda
#   SIZE=tiny DEVICE=cpu bash benchmarks/gpu_check.sh     # the same steps on a toy LLaVA, on a CPU
#
# Offline machines: wheels of missing libraries (alt-profanity-check for eval) may be put in .whl/.
set -euo pipefail
SIZE=${SIZE:-7b}
DEVICE=${DEVICE:-cuda}
W=${WORK:-/tmp/sgm-gpu}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import profanity_check" 2>/dev/null || {
  echo "FAILED: eval needs alt-profanity-check: pip install 'sgm-bake[judge]' (or put its wheel in .whl/)" >&2
  exit 1
}
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
rm -rf "$W"; mkdir -p "$W"
: > "$W/steps.tsv"

sgm() { python3 -m sgm_bake -q "$@"; }
# run LABEL COMMAND...: time a step, log it, stop the whole check if it fails
run() {
  local label=$1; shift
  echo "== $label"
  local start=$SECONDS
  if ! "$@"; then
    echo "FAILED: $label" >&2
    exit 1
  fi
  printf '%s\t%s\n' "$label" "$((SECONDS - start))" >> "$W/steps.tsv"
}
same() {  # same A B: byte-identical expertise files
  cmp "$1" "$2" && echo "byte-identical: $(basename "$1") $(basename "$2")"
}

if [ "$SIZE" = tiny ]; then
  run "build a toy LLaVA" python3 benchmarks/build_llava.py "$W/model" --tiny
  ALL=(--max-samples 48); SOME=(--max-samples 24 --batch-size 4); RANKS=2
  MAPPED=(--max-memory cpu=100KB --offload-folder "$W/offload")
else
  run "build a llava-1.5-7b-shaped bf16 checkpoint on $DEVICE" \
    python3 benchmarks/build_llava.py "$W/model" --config benchmarks/model_configs/llava-1.5-7b \
    --device "$DEVICE" --shards 3
  ALL=(); SOME=(--max-samples 64 --batch-size 16); RANKS=1
  MAPPED=(--device-map auto --max-memory 0=6GiB,cpu=100GiB)
fi
M=$W/model

run "one-command form, builtin:default, --device $DEVICE" sgm "$M" "$W/out" --device "$DEVICE" "${ALL[@]}"
run "verify --full (float32)" sgm verify "$W/out" --full --device "$DEVICE"
run "profile, one process" sgm profile "$M" -o "$W/single.safetensors" --device "$DEVICE" "${SOME[@]}"
run "torchrun --nproc-per-node $RANKS profile" python3 -m torch.distributed.run --standalone \
  --nproc-per-node "$RANKS" -m sgm_bake -q profile "$M" -o "$W/torchrun.safetensors" \
  --device "$DEVICE" "${SOME[@]}"
run "torchrun result is byte-identical" same "$W/single.safetensors" "$W/torchrun.safetensors"
if [ "$DEVICE" = cuda ] && [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" = 1 ]; then
  echo "== torchrun --nproc-per-node 2 on one GPU: rank 1 must be refused in one line"
  set +e
  python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m sgm_bake -q profile "$M" \
    -o "$W/two.safetensors" --device "$DEVICE" "${SOME[@]}" > "$W/two.log" 2>&1
  set -e
  grep -q "has no GPU" "$W/two.log" || { echo "FAILED: no clear line for the rank without a GPU" >&2; tail -20 "$W/two.log"; exit 1; }
  if grep -q "Traceback" "$W/two.log"; then
    echo "note: a rank printed a traceback (see $W/two.log)"
  fi
  grep -m1 "has no GPU" "$W/two.log"
fi
run "profile with ${MAPPED[*]}" sgm profile "$M" -o "$W/mapped.safetensors" --device "$DEVICE" \
  "${SOME[@]}" "${MAPPED[@]}"
run "device-mapped result is byte-identical" same "$W/single.safetensors" "$W/mapped.safetensors"
head -n 8 sgm_bake/_data/profiles/mmtoxicqa-organism-v1.jsonl > "$W/few.jsonl"
grep '"benign"' sgm_bake/_data/profiles/mmtoxicqa-organism-v1.jsonl | head -n 8 >> "$W/few.jsonl"
run "eval --no-base, 16 items, 16 new tokens" sgm eval "$W/out" --no-base --prompt-set "$W/few.jsonl" \
  --max-new-tokens 16 --device "$DEVICE" -o "$W/eval.json"

echo
echo "== summary (for benchmarks/RESULTS.md)"
python3 - "$W" "$DEVICE" <<'PY'
import json, sys
from pathlib import Path

from sgm_bake.pipeline.plan import PlanOptions, plan
from sgm_bake.runtime.memory import format_bytes

work, device = Path(sys.argv[1]), sys.argv[2]
print("| step | wall s |")
print("|---|---|")
for line in (work / "steps.tsv").read_text().splitlines():
    label, seconds = line.split("\t")
    print(f"| {label} | {seconds} |")
record = json.loads((work / "out" / "sgm" / "bake.json").read_text())
stages = record["stages"]
verification = record["verification"]
print()
print(f"verification (last run, {verification['mode']}): passed {verification['passed']}, "
      f"max relative difference {verification['max_rel_diff']:.3g} "
      f"(tolerance {verification['tolerance']:.3g})")
throughput = stages.get("profile", {}).get("throughput", {})
if throughput:
    line = (f"profile throughput: {throughput['samples']} samples, batch "
            f"{throughput['batch_size']}{' (auto)' if throughput['batch_size_auto'] else ''}, "
            f"padding {throughput['padding_share']:.1%}, {throughput['tokens_per_second']:,.0f} "
            f"tokens/s, capture {throughput['capture_seconds']} s, probe "
            f"{throughput['probe_seconds']} s, scoring {throughput['scoring_seconds']} s")
    if "matrix_rate_share" in throughput:
        line += (f", {throughput['model_tflops_per_second']} TFLOP/s = "
                 f"{throughput['matrix_rate_share']:.1%} of {throughput['matrix_rate_tflops']:.0f}")
    print(line)
for name, variant in json.loads((work / "eval.json").read_text())["variants"].items():
    metrics = variant["metrics"]
    print(f"eval {name}: {sum(metrics['items'].values())} items, "
          f"{metrics['seconds_per_item']:.2f} s per item, {metrics['forward_passes']} forward "
          f"passes, harmful {metrics['harmful_rate']:.1%} (random weights: a smoke test)")

def gpu_total(figures):
    """Peak the device needed: torch's reserved peak plus what it held beyond torch (context)."""
    reserved = figures.get("gpu_peak_reserved_bytes", {})
    context = figures.get("gpu_context_bytes", {})
    return max((reserved[d] + context.get(d, 0) for d in reserved), default=0)

samples = throughput.get("samples") or 480
memory_plan = plan(str(work / "model"), PlanOptions(
    device="cpu" if device == "cpu" else "cuda", profile_samples=samples,
    batch_size=throughput.get("batch_size") or 8,
    sequence_length=max(1, round(throughput.get("tokens", 0) / max(1, samples))) or 1024,
))
names = {"bake": "bake", "verify": "verify", "verify_full": "verify --full", "profile": "profile"}
print()
print("| stage | plan host | measured host peak (above start) | plan GPU | measured GPU (reserved + context) |")
print("|---|---|---|---|---|")
for stage, figures in stages.items():
    row = next((s for s in memory_plan.stages if s.stage == names.get(stage)), None)
    if row is None:
        continue
    host = figures["host_peak_rss_anon_bytes"]
    above = figures.get("host_peak_above_start_bytes", host)
    gpu = gpu_total(figures)
    print(f"| {names[stage]} | {format_bytes(row.host_bytes)} | {format_bytes(host)} "
          f"({format_bytes(above)}); plan/measured {row.host_bytes / host:.2f} | "
          f"{format_bytes(row.gpu_bytes) if row.gpus else '-'} | "
          f"{format_bytes(gpu) if gpu else '-'}"
          f"{f'; plan/measured {row.gpu_bytes / gpu:.2f}' if gpu and row.gpus else ''} |")
PY
echo "gpu check passed"
