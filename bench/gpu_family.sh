#!/usr/bin/env bash
# The family track at the gpu scale (bench/family_track.py --scale gpu): every file of the Python
# documentation cut to 1024 tokens, the full-depth Qwen2.5-Coder-0.5B as the memory's init (teacher:
# the 0.5B), three seeds of the memory and of its CE ablation, LoRA r = 16 on both bases (learning
# rate from a grid on validation), the kNN-LM, both bases scored; the tables are rebuilt here after.
#
# Here, first:  bash bench/gpu_family.sh --prepare
#   writes .device/gpu/family-data (splits and token ids: the device has no python3.11-doc) and cuts
#   both GGUF files (runs/real-models, from bench/real_models.py) into parts of 30 MiB under
#   .device/gpu/qwen-pNN/, with one manifest per model in .device/gpu/qwen-0.5b/ and qwen-1.5b/.
#   A device call carries at most 64 MiB with the working tree, so the 1.6 GB of GGUF travel over
#   about 55 calls made back to back on a warm machine (command "true", carry [".device/gpu/qwen-pNN"]);
#   at ~15 s a call that is more device time than a 15-minute lease leaves for the run itself: this
#   track needs a device whose lease allows it, or one that already holds the two models.
# On the device, after the parts:
#     command:  bash bench/gpu_family.sh
#     carry:    [".device/gpu/qwen-0.5b", ".device/gpu/qwen-1.5b", ".device/gpu/whl", ".device/gpu/family-data"]
# Writes under $OUT: gpu_family.log, family_gpu.{json,md}, family_gpu_work.tgz.NN (the cache without
# weights). Here, then:  python bench/family_track.py --scale gpu --from-archive FILES_AT/family_gpu_work.tgz
#
# CPU rehearsal (scale tiny: both bases cut to 2 blocks, the same code paths, faiss blocked, LoRA and
# two seeds; the models come from runs/real-models here):  bash bench/gpu_family.sh --cpu-rehearsal
#
# Options: --prepare, --cpu-rehearsal, --minutes M (the command's budget, default 9)
set -uo pipefail
MINUTES=9
MODE=run
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; shift ;;
    --cpu-rehearsal) MODE=rehearsal; shift ;;
    --minutes) MINUTES=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 1
D=.device/gpu
if [ "$MODE" = prepare ]; then
  PY=${PYTHON:-python}
  "$PY" bench/family_track.py --scale gpu --prepare-data --work runs/family-gpu || exit 1
  mkdir -p "$D/family-data" && cp -r runs/family-gpu/data runs/family-gpu/scale.json "$D/family-data/"
  "$PY" - "$D" <<'EOF' || exit 1
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from gpu_common import MANIFEST, sha256
import real_models as rm

d, part_bytes, n = Path(sys.argv[1]), 30 * 2**20, 0
for key, short in (("qwen2.5-coder-0.5b", "qwen-0.5b"), ("qwen2.5-coder-1.5b", "qwen-1.5b")):
    model = rm.MODELS[key]
    gguf = rm.fetch(model, rm.DEFAULT_DIR)  # checked size and sha256 (downloaded if missing)
    man = d / short
    man.mkdir(parents=True, exist_ok=True)
    hf = rm.DEFAULT_DIR / f"{key}-hf"  # config and tokenizer only: the weights come from the GGUF
    parts = []
    with open(gguf, "rb") as src:
        while chunk := src.read(part_bytes):
            n += 1
            p = d / f"qwen-p{n:02d}" / f"{gguf.name}.part{len(parts) + 1}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(chunk)
            parts.append(str(p))
    (man / MANIFEST).write_text(json.dumps({"file": gguf.name, "sha256": model.sha256, "bytes": model.size,
                                            "parts": parts}, indent=1))
print(f"wrote {n} part folders {d}/qwen-p01 .. qwen-p{n:02d} and the manifests in {d}/qwen-0.5b, {d}/qwen-1.5b")
EOF
  exit 0
fi
[ "$MODE" = rehearsal ] && export CPU_REHEARSAL=1 && [ "$MINUTES" = 9 ] && MINUTES=20
. "$(dirname "$0")/gpu_env.sh"
cd "$REPO" || exit 1
exec > >(tee -a "$OUT/gpu_family.log") 2>&1
T0=$SECONDS
if [ "$MODE" = rehearsal ]; then
  SCALE=tiny; MODELS=runs/real-models; WORK=runs/family-tiny-device
else
  SCALE=gpu; MODELS=runs/family-models; WORK=runs/family-gpu-device
  for m in qwen-0.5b qwen-1.5b; do  # join the carried parts, check the sha256 (bench/gpu_common.py)
    "$PY" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import gpu_common as g; \
g.join_parts(Path('$D/$m'), Path('$MODELS'))" || exit 1
  done
  [ -f "$D/family-data/scale.json" ] || { echo "missing $D/family-data: run bash bench/gpu_family.sh --prepare here" >&2; exit 1; }
  mkdir -p "$WORK" && cp -rn "$D/family-data"/. "$WORK"/
fi
echo "== gpu_family.sh: scale $SCALE on $DEVICE, budget $MINUTES min, OUT $OUT"
rc=0
timeout -k 10 $(( MINUTES * 60 - 40 - (SECONDS - T0) )) "$PY" bench/family_track.py --scale "$SCALE" --device "$DEVICE" \
  --search torch --models "$MODELS" --work "$WORK" --out "$OUT" --pack-to "$OUT" || rc=$?
if [ $rc -ne 0 ]; then  # stopped (or failed) before the tables: hand back what is cached
  echo "== family_track.py ended with rc $rc: packing the cache as it is"
  "$PY" bench/gpu_common.py pack "$WORK" "$OUT" "family_${SCALE}_work" data logprobs runs scale.json models.json \
    score_costs.json first_run_wall.json
fi
echo "== gpu_family.sh done in $((SECONDS - T0)) s (rc $rc); files in $OUT:"
ls -la "$OUT"
exit $rc
