#!/usr/bin/env bash
# Pretrain memreg-base-large then memreg-base-small on a lent GPU.
#
#   usage (repo root): bash examples/bases/gpu_pretrain.sh LARGE_MINUTES SMALL_MINUTES [SEED]
#   e.g. run tool: command "bash examples/bases/gpu_pretrain.sh 4 2.5", carry [".device/tokens.npz"]
#
# Needs only: this script, examples/bases/build_bases.py, models/memreg-tokenizer/ and the
# carried .device/tokens.npz (built by `build_bases.py corpus/tokenizer/encode`, see its header).
# Writes 4 files per model (model.safetensors, config.json, generation_config.json,
# training.json) to $OUT/memreg-base-{large,small}/ -- 8 files in all, each < 16 MB.
# Minutes are the training budget per model; held-out eval + save add a few seconds each.
# Afterwards, locally: copy the folders to models/ and add the tokenizer files with
#   python examples/bases/build_bases.py attach-tokenizer --tokenizer models/memreg-tokenizer \
#       --model models/memreg-base-large          (same for small)
set -uo pipefail
LARGE_MIN=${1:-4}
SMALL_MIN=${2:-2.5}
SEED=${3:-0}
OUT=${OUT:-runs/bases}
PY=${PYTHON:-$(command -v python3 || command -v python)}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
rc=0
for spec in "large $LARGE_MIN" "small $SMALL_MIN"; do
  set -- $spec
  "$PY" examples/bases/build_bases.py pretrain --tokens .device/tokens.npz \
    --tokenizer models/memreg-tokenizer --size "$1" --out "$OUT/memreg-base-$1" \
    --device cuda --minutes "$2" --seed "$SEED" --no-copy-tokenizer --log-every 200 || rc=1
done
ls -la "$OUT"/memreg-base-* || true
exit $rc
