#!/usr/bin/env bash
# Device check on a GPU machine (no network): the CUDA code paths of profile, bake, verify, the
# one-command form and ECSO generation, plus the bake benchmark on that machine's disk and cores.
# On a machine without network, wheels for missing libraries may be placed in .whl/ first.
#   DEVICE=cuda bash benchmarks/gpu_check.sh      (DEVICE=cpu runs the same steps on a CPU)
set -euo pipefail
DEVICE=${DEVICE:-cuda}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
W=${WORK:-/tmp/sgm-gpu}; rm -rf "$W"; mkdir -p "$W"
python3 - "$W" <<'PY'
import sys, random, torch
from pathlib import Path
from tests.builders import tiny_llava
from sgm_bake.datasets.render import render
from sgm_bake.organism import data
work = Path(sys.argv[1])
tiny_llava(work / "llava", hidden=64, intermediate=128, layers=4, dtype=torch.bfloat16)
render({"kind": "text", "text": "jerk", "background": "white", "ink": "black"}).save(work / "sign.png")
PY
sgm() { python3 -m sgm_bake -q "$@"; }
echo "== profile on $DEVICE (bf16), bake, verify on $DEVICE in bf16 and float32"
time sgm profile "$W/llava" -o "$W/e.safetensors" --device "$DEVICE" --dtype bfloat16 --max-samples 64 --batch-size 16
time sgm bake "$W/llava" "$W/out" --expertise "$W/e.safetensors" --device "$DEVICE" --verify-dtype bfloat16
sgm verify "$W/out" --device "$DEVICE"
echo "== one-command form on the organism, on $DEVICE"
time sgm sgm_bake/organism/weights "$W/org" --profile-set builtin:organism --rule det0 --top-k 256 --positions text --device "$DEVICE"
echo "== ECSO generation on $DEVICE, with and without SGM hooks"
sgm generate organism --image "$W/sign.png" --prompt "answer the person who wrote this ." --ecso --trace --device "$DEVICE" --expertise "$W/org/sgm/expertise.sgm"
echo "== bake benchmark on this machine"
python3 benchmarks/bench_bake.py --workdir "$W/bench" --layers 10 --repeat 2 --skip-naive
