#!/usr/bin/env bash
# Issue 15's GPU figures in one call, sized for under 9 minutes on one H100 (no network needed):
#
#   bash benchmarks/gpu_check.sh            # JSON and logs in $OUT (else benchmarks/out/)
#
# Steps, in order, each under its own `timeout` and never past the whole budget
# (GPU_CHECK_BUDGET seconds, default 530); a step that does not fit in what is left is skipped
# and says so. Every step writes its JSON as it goes, so a step cut short keeps what it measured.
#   0. packages and the card (fails here, exit 2, when a needed package or the GPU is missing)
#   1. sd_blip   BLIP at batch 64/128/256 and with the static KV cache; SD 1.5 512² 25 steps at
#                batch 8/16/32, batch-1 it/s, and fused QKV / channels-last VAE variants
#   2. pipeline  the default stages end to end (rapidocr, blip, git, vit-gpt2, blip-vqa, SD 512²
#                25 steps) over 128 photos in embedded mode: items/s, GPU-busy %, model-busy %
#   3. compile   SD with fused QKV + torch.compile (UNet), then + CUDA graphs (reduce-overhead),
#                at batch 16 (one compile each, ~1 min); the BLIP compiled decoder step
#   4. sdxl      SDXL base's architecture, 1024², 30 steps, guidance 5, batch 1 and batch 4
#   5. flux      FLUX.1-schnell 1024², 4 steps (writes and reads a 34 GB checkpoint): only when
#                at least 150 s are left, else skipped
# GPU_CHECK_SMOKE=1 runs the same steps with --smoke (tiny widths, CPU): the code path only.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-530}
SMOKE=()
[[ ${GPU_CHECK_SMOKE:-0} == 1 ]] && SMOKE=(--smoke)
export GPU_CHECK_SMOKE=${GPU_CHECK_SMOKE:-0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
SUMMARY=()

echo "=== 0. packages and card"
"$PY" -m pip list 2>/dev/null | grep -i -E "torch|transformers|diffusers|accelerate|onnxruntime|rapidocr"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
"$PY" - <<'EOF' || { echo "gpu_check: a needed package or the GPU is missing (above); nothing run"; exit 2; }
import importlib, sys
need = ["torch", "transformers", "diffusers", "PIL", "rich", "pydantic_settings", "numpy"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing: {', '.join(missing)} (install them from wheels carried in; no network)")
import os, torch
if not torch.cuda.is_available() and os.environ["GPU_CHECK_SMOKE"] != "1":
    sys.exit("torch sees no CUDA device")
print("card:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke)",
      "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF
PIPELINE_OK=1
"$PY" - <<'EOF' || PIPELINE_OK=0
import importlib, sys
need = ["celery", "rapidocr", "onnxruntime", "typer", "boto3"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"the pipeline step needs {', '.join(missing)}: it will be skipped")
EOF

# step NAME LIMIT ARGS...: gpu.py ARGS under `timeout`, at most what is left of the budget
step() {
  local name=$1 limit=$2 min=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < min)); then
    echo "=== $name: SKIPPED (${left}s left of the ${BUDGET}s budget; it needs ${min}s)"
    SUMMARY+=("$name|skipped (${left}s left)")
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (at most ${limit}s): gpu.py $*"
  local t=$SECONDS
  timeout -k 10 "$limit" "$PY" benchmarks/gpu.py "$@" "${SMOKE[@]}" --out "$OUT/gpu-$name.json" 2>&1 \
    | tee "$OUT/gpu-$name.log" | grep -v -E "Writing model shards|Loading (weights|checkpoint)"
  local rc=${PIPESTATUS[0]}
  local what="exit $rc"
  ((rc == 124 || rc == 137)) && what="timed out (partial JSON kept)"
  SUMMARY+=("$name|$what after $((SECONDS - t))s")
}

step sd_blip 190 100 --only blip,sd --no-loop --caption-batch-sizes 128,256 \
  --blip-static-cache --batch-sizes 16,32 --sd-fast fuse,channels-last
if ((PIPELINE_OK)); then
  step pipeline 120 90 --pipeline --pipeline-images 128 --pipeline-chunk 64
else
  SUMMARY+=("pipeline|skipped (packages missing, above)")
fi
step compile 160 100 --only sd,blip --no-loop --batch-sizes 16 --fast-batch 16 \
  --sd-fast fuse+compile,fuse+compile+cudagraphs --blip-compile
step sdxl 110 80 --only sdxl --no-loop --gen-batch-images 4
step flux 150 150 --only flux-schnell --no-loop --gen-batch-images 4

echo
echo "=== summary ($((SECONDS - START))s in all; JSON in $OUT)"
for s in "${SUMMARY[@]}"; do printf '  %-9s %s\n' "${s%%|*}" "${s#*|}"; done
"$PY" benchmarks/gpu_summary.py "$OUT" || true
