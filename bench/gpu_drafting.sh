#!/usr/bin/env bash
# Issue "Better and faster", item 4: bench/drafting.py --pair qwen (Qwen2.5-Coder-1.5B base, 0.5B memory)
# in bfloat16 on one GPU, batch 1, greedy and sampling, every method of the CPU run plus the forward
# costs (one forward of T = 1, 2, 4, 8 new tokens): whether drafting pays where a T-token forward
# costs about one.
#
# Here, once (writes .device/gpu/qwen-shape: the pair's config.json files, the tokenizer and the
# held-out documents, ~12 MB; the weights, 9 GB, cannot travel in a device call's 64 MiB):
#     bash bench/gpu_drafting.sh --prepare
# On the device (the run tool):
#     command:  bash bench/gpu_drafting.sh
#     carry:    [".device/gpu/whl", ".device/gpu/qwen-shape"]      (whl: bash bench/gpu_prepare.sh)
#     timeout_s: 420
# Without the HF folders on the device the models get random weights of the real shape
# (--shape-only): forward costs and tokens/s of the plain methods are right; drafts kept, and so the
# drafting speeds, are not (random models agree by chance only). On a machine that has
# runs/real-models (bench/real_models.py), give --models runs/real-models for the real weights.
#
# CPU rehearsal (tiny random Qwen2 pair, bfloat16, ~1-2 min on 2 cores):
#     bash bench/gpu_drafting.sh --cpu-rehearsal
#
# Writes under $OUT (default runs/gpu-out): gpu_drafting.log, drafting-qwen-gpu.{json,md}.
# Options: --models DIR (default .device/gpu/qwen-shape, random weights), --new-tokens N (48),
#          --prompts N (3), --repeats N (3), --prepare, --cpu-rehearsal
set -uo pipefail
MODELS=.device/gpu/qwen-shape
NEW=48
PROMPTS=3
REPEATS=3
REHEARSAL=0
PREPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS=$2; shift 2 ;;
    --new-tokens) NEW=$2; shift 2 ;;
    --prompts) PROMPTS=$2; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --prepare) PREPARE=1; shift ;;
    --cpu-rehearsal) REHEARSAL=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ "$PREPARE" = 1 ]; then
  cd "$(dirname "$0")/.." || exit 1
  D=.device/gpu/qwen-shape
  for m in qwen2.5-coder-1.5b-hf qwen2.5-coder-0.5b-hf; do
    [ -f runs/real-models/$m/config.json ] || { echo "runs/real-models/$m is missing: python bench/real_models.py" >&2; exit 1; }
    mkdir -p "$D/$m" && cp runs/real-models/$m/config.json runs/real-models/$m/generation_config.json "$D/$m/"
  done
  cp runs/real-models/qwen2.5-coder-1.5b-hf/tokenizer*.json "$D/qwen2.5-coder-1.5b-hf/"
  [ -f runs/family-cpu/data/test.jsonl ] || { echo "runs/family-cpu/data/test.jsonl is missing: python bench/family_track.py --prepare-only" >&2; exit 1; }
  cp runs/family-cpu/data/test.jsonl "$D/test.jsonl"
  du -sh "$D"
  exit 0
fi
[ "$REHEARSAL" = 1 ] && export CPU_REHEARSAL=1
. "$(dirname "$0")/gpu_env.sh"
cd "$REPO" || exit 1
exec > >(tee -a "$OUT/gpu_drafting.log") 2>&1
echo "== gpu_drafting.sh: device $DEVICE, models $MODELS, OUT $OUT"
if [ "$REHEARSAL" = 1 ]; then
  # the same code path at toy size: tiny random Qwen2 models, bfloat16, on the CPU
  timeout 300 "$PY" bench/drafting.py --pair tiny --dtype bfloat16 --device cpu --prompts 2 --prompt-tokens 16 \
    --new-tokens 12 --repeats 3 --modes forward,greedy,sample --out "$OUT/drafting-tiny-rehearsal.json"
  exit $?
fi
SHAPE=()
[ -f "$MODELS/qwen2.5-coder-1.5b-hf/model.safetensors" ] || SHAPE=(--shape-only)
HELDOUT=$MODELS/test.jsonl
[ -f "$HELDOUT" ] || HELDOUT=runs/family-cpu/data/test.jsonl
timeout 400 "$PY" bench/drafting.py --pair qwen --models "$MODELS" --heldout "$HELDOUT" "${SHAPE[@]}" \
  --dtype bfloat16 --device "$DEVICE" --prompts "$PROMPTS" --prompt-tokens 48 --new-tokens "$NEW" --repeats "$REPEATS" \
  --modes forward,greedy,sample --out "$OUT/drafting-qwen-gpu.json"
