#!/usr/bin/env bash
# "Quality benchmark v2", item 8: bench/quality.py at the gpu scale on one H100 in <= 7 minutes --
# every document of both domains (law, code; cut to 512 tokens), three seeds, learning-rate grids,
# the SmolLM2 track -- writing the per-token log-probabilities from which the tables and intervals
# are then computed here, on the CPU.
#
# Here, first: bash bench/gpu_prepare.sh   (wheels, SmolLM2 in 4 parts, and .device/gpu/quality-data:
#   the splits, token ids and general text, built here because the device has neither these Debian
#   files nor man pages; the device run reads them, so both machines score the same documents)
# On the device (the run tool), four calls back to back (the GGUF is 98 MB; one call carries <= 64 MiB):
#     command "true", carry [".device/gpu/smollm2-p1"]; then the same with -p2, then with -p3; then
#     command:  bash bench/gpu_quality.sh --smollm2 .device/gpu/smollm2
#     carry:    [".device/gpu/smollm2-p4", ".device/gpu/smollm2", ".device/gpu/whl", ".device/gpu/quality-data"]
#     timeout_s: 480
# Time: at most --minutes (7) of command, enforced: 40 s before it the run is stopped and what it has
# cached is packed all the same; a second call on the same warm machine continues from that cache
# (runs/quality-gpu-device/, inside the copied working tree), as does a later session's call that
# carries it back. Not yet run on a GPU (none was lent while it was written): the gpu scale (about
# 56 trained rows on 130 k + 46 k training tokens, the SmolLM2 conversion and track) is sized by
# estimate, and the log's timestamps show where the minutes went.
#
# Writes under $OUT (default runs/gpu-out): gpu_quality.log, quality_gpu.{json,md} and
# quality_gpu_sweep.png (the tables as the device computed them), quality_gpu_work.tgz.00 .. .03 (the
# cache without weights: splits, per-token log-probabilities of every model on every text, each run's
# learning curve and costs, the latency measured on the device), at most 8 files.
# Into README numbers, here (the files as the run tool fetched them, under its files_at folder):
#     python bench/quality.py --scale gpu --from-archive FILES_AT/quality_gpu_work.tgz
#   -> bench/results/quality_gpu.{json,md} + quality_gpu_sweep.png, the same tables recomputed on the
#      CPU from the log-probabilities (bootstrap intervals included); no model runs.
#
# CPU rehearsal (scale tiny, faiss blocked, the same code paths; ~3 min on 2 cores once its data exist):
#     bash bench/gpu_quality.sh --cpu-rehearsal
#
# Options: --smollm2 SPEC (default .device/gpu/smollm2: the parts must all be there, the real weights
#          are needed), --minutes M (7), --cpu-rehearsal
set -uo pipefail
SMOL=.device/gpu/smollm2
MINUTES=7
REHEARSAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smollm2) SMOL=$2; shift 2 ;;
    --minutes) MINUTES=$2; MINUTES_SET=$2; shift 2 ;;
    --cpu-rehearsal) REHEARSAL=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ "$REHEARSAL" = 1 ] && export CPU_REHEARSAL=1 && MINUTES=${MINUTES_SET:-10}
. "$(dirname "$0")/gpu_env.sh"
cd "$REPO" || exit 1
exec > >(tee -a "$OUT/gpu_quality.log") 2>&1
T0=$SECONDS
SCALE=gpu; [ "$REHEARSAL" = 1 ] && SCALE=tiny
DATA=.device/gpu/quality-data; [ "$REHEARSAL" = 1 ] && DATA=.device/gpu/quality-data-tiny
WORK=runs/quality-$SCALE-device
if [ ! -f "$DATA/scale.json" ]; then
  if [ "$REHEARSAL" = 1 ]; then  # here the files exist: prepare as gpu_prepare.sh does for the gpu scale
    "$PY" bench/quality.py --scale "$SCALE" --prepare-data --work "runs/quality-$SCALE" || exit 1
    mkdir -p "$DATA" && cp -r "runs/quality-$SCALE/data" "runs/quality-$SCALE/general.npz" "runs/quality-$SCALE/scale.json" "$DATA/"
  else
    echo "missing $DATA: run bash bench/gpu_prepare.sh here and carry .device/gpu/quality-data" >&2; exit 1
  fi
fi
mkdir -p "$WORK" && cp -rn "$DATA"/. "$WORK"/
echo "== gpu_quality.sh: scale $SCALE on $DEVICE, SmolLM2 $SMOL, budget $MINUTES min, OUT $OUT"
rc=0
timeout -k 10 $(( MINUTES * 60 - 40 - (SECONDS - T0) )) "$PY" bench/quality.py --scale "$SCALE" --device "$DEVICE" \
  --search torch --smollm2 "$SMOL" --work "$WORK" --out "$OUT" --pack-to "$OUT" || rc=$?
if [ $rc -ne 0 ]; then  # stopped (or failed) before the tables: hand back what is cached
  echo "== quality.py ended with rc $rc: packing the cache as it is"
  "$PY" bench/gpu_common.py pack "$WORK" "$OUT" "quality_${SCALE}_work" data logprobs runs general.npz scale.json \
    first_run_wall.json latency.json device.json
fi
echo "== gpu_quality.sh done in $((SECONDS - T0)) s (rc $rc); files in $OUT:"
ls -la "$OUT"
exit $rc
