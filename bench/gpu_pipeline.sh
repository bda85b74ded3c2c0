#!/usr/bin/env bash
# "Past one CPU", item 4: memreg at GPU scale on one H100, in one call of at most --minutes (6).
#
# On the device (the run tool), after `bash bench/gpu_prepare.sh` here:
#     command:  bash bench/gpu_pipeline.sh --smollm2 .device/gpu/smollm2
#     carry:    [".device/gpu/whl", ".device/gpu/smollm2"]
#     timeout_s: 420
# (.device/gpu/smollm2 alone is SmolLM2's config + tokenizer: the models get random weights of its
# shape, which is all a throughput run needs. Carried after the four GGUF parts, see
# bench/gpu_prepare.sh, the same command uses the real weights.)
#
# What it runs, in this order (each under `timeout`, so one slow part cannot eat the others' time):
#   (b) bench/attach_overhead.py --device cuda --dtype bf16 --batches 1,16 --variants plain,streams,graphs
#       1. --pair qwen2-1.5b: random Qwen2.5-1.5B-shaped base + Qwen2.5-0.5B-shaped memory   (<= 100 s)
#       2. --pair smollm2: SmolLM2-135M + a 4-block truncated SmolLM2 memory (the one (a) trains, when a
#          previous run on the same warm machine left it; else the untrained init, same shapes) (<= 70 s)
#       composed/base tokens/s for scoring and for greedy decoding at batch 1 and 16: as shipped
#       (ComposedForCausalLM, members one after the other), the memory in a helper thread on a 2nd CUDA stream,
#       and static caches with one CUDA graph per member step (members in sequence, and on 2 streams);
#       the goal: <= 1.20x at batch 1. Floors printed beside: FLOPs and weight bytes.
#   (a) bench/gpu_pipeline.py: `memreg train` (search torch, no faiss) with SmolLM2-135M as teacher on
#       >= 5 M tokens of this machine's Python sources, exact kNN targets (k = 1024), a 4-block
#       truncated-SmolLM2 memory trained for 1 minute; per-stage wall time and throughput. It gets
#       the time left; if it runs out, the stage under way is reported with its rate and the time
#       the whole stage would take (expected at 5 M tokens: the kNN stage's CPU part, see README).
# Time: at most --minutes (6) of command, enforced (plus the machine's start, ~1-2 min): (b) is capped at
# 170 s, (a) gets the rest. Not yet run on a GPU (none was lent while it was written): whether (a)
# finishes 5 M tokens inside its share is one of the things it measures; `--tokens 1000000` is a
# complete smaller pass.
#
# Writes under $OUT (default runs/gpu-out): gpu_pipeline.log (everything printed),
# attach_qwen2.json, attach_smollm2.json, pipeline.json (4 files, < 1 MB).
# Into README numbers, here: python bench/gpu_report.py pipeline <files_at folder>   (markdown tables)
#
# CPU rehearsal (tiny sizes, faiss blocked, ~3 min on 2 cores):
#     bash bench/gpu_pipeline.sh --cpu-rehearsal [--smollm2 .device/gpu/smollm2]
#
# Options: --smollm2 SPEC (default .device/gpu/smollm2; bench/gpu_common.py lists the forms),
#          --minutes M (6), --tokens N (5000000), --cpu-rehearsal
set -uo pipefail
SMOL=.device/gpu/smollm2
MINUTES=6
TOKENS=5000000
REHEARSAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smollm2) SMOL=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --cpu-rehearsal) REHEARSAL=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ "$REHEARSAL" = 1 ] && export CPU_REHEARSAL=1
. "$(dirname "$0")/gpu_env.sh"
cd "$REPO" || exit 1
exec > >(tee -a "$OUT/gpu_pipeline.log") 2>&1
T0=$SECONDS
WORK=${WORK:-/tmp/memreg-gpu-pipeline}
echo "== gpu_pipeline.sh: device $DEVICE, SmolLM2 $SMOL, budget $MINUTES min, OUT $OUT"

if [ "$REHEARSAL" = 1 ]; then  # same code paths, sizes a 2-core CPU gets through in ~3 minutes
  TB1=80; TB2=70
  QWEN=(--base-layers 1 --mem-layers 1 --vocab-size 8192 --tokens 256 --context 128 --stride 128 --prompt 8
        --new-tokens 4 --repeats 1 --decode-repeats 1 --batches 1,2 --dtype bf16 --threads 2)
  SMOLB=(--base-layers 4 --mem-layers 2 --tokens 256 --context 128 --stride 128 --prompt 8 --new-tokens 4
         --repeats 1 --decode-repeats 1 --batches 1,2 --dtype fp32 --threads 2)
  PIPE=(--tokens 2000 --teacher-layers 2 --init-layers 2 --k 32 --train-minutes 0.1 --batch-size 2
        --teacher-batch-size 4 --search-batch-size 512 --block-size 128 --eval-fraction 0.1 --val-tokens 128
        --eval-every 5 --max-doc-bytes 1500 --report-every 5)
else
  TB1=100; TB2=70
  QWEN=(--tokens 8192 --context 1024 --stride 1024 --prompt 32 --new-tokens 64 --repeats 3 --decode-repeats 3
        --batches 1,16 --dtype bf16 --threads 8)
  SMOLB=(--tokens 8192 --context 1024 --stride 1024 --prompt 32 --new-tokens 64 --repeats 3 --decode-repeats 3
         --batches 1,16 --dtype bf16 --threads 8 --mem-layers 4)
  PIPE=(--tokens "$TOKENS" --init-layers 4 --train-minutes 1 --batch-size 16 --teacher-batch-size 64
        --search-batch-size 4096 --block-size 512 --eval-fraction 0.01 --eval-every 200 --report-every 15)
fi
rc=0
echo "== (b1) attach overhead, Qwen2-shaped 1.5B base + 0.5B memory (<= ${TB1} s)"
timeout -k 10 "$TB1" "$PY" bench/attach_overhead.py --device "$DEVICE" --pair qwen2-1.5b "${QWEN[@]}" \
  --variants plain,streams,graphs --skip-knn --skip-rss --work-dir "$WORK/attach" --out "$OUT/attach_qwen2.json" || rc=1
echo "== (b2) attach overhead, SmolLM2-135M + truncated SmolLM2 memory (<= ${TB2} s)"
timeout -k 10 "$TB2" "$PY" bench/attach_overhead.py --device "$DEVICE" --pair smollm2 --smollm2 "$SMOL" \
  --memory-dir "$WORK/memory" "${SMOLB[@]}" --variants plain,streams,graphs --skip-knn --skip-rss \
  --work-dir "$WORK/attach" --out "$OUT/attach_smollm2.json" || rc=1
LEFT=$(( MINUTES * 60 - (SECONDS - T0) - 15 ))
echo "== (a) memreg train with SmolLM2 as teacher, torch search, the ${LEFT} s left"
timeout -k 20 "$LEFT" "$PY" bench/gpu_pipeline.py --smollm2 "$SMOL" --device "$DEVICE" "${PIPE[@]}" \
  --work "$WORK" --out-json "$OUT/pipeline.json" || rc=1
echo "== gpu_pipeline.sh done in $((SECONDS - T0)) s (rc $rc); files in $OUT:"
ls -la "$OUT"
exit $rc
