# Sourced by bench/gpu_pipeline.sh and bench/gpu_quality.sh: makes `import memreg` work on the lent
# GPU machine, where the project is not installed and nothing can be downloaded.
#
#   * wheels carried in .device/gpu/whl (bench/gpu_prepare.sh: pydantic & co., gguf) are installed into
#     /tmp/memreg-site when pydantic or gguf is missing;
#   * memreg is put on PYTHONPATH as a folder of links (/tmp/memreg-shim/memreg -> sdk/, plus
#     registry/, cli/, schemas/), the layout pyproject.toml's package-dir gives an install;
#   * Hugging Face offline; with CPU_REHEARSAL=1, `import faiss` is made to fail (the device has no
#     faiss), so the rehearsal proves the path needs none.
# Sets: REPO, PY, OUT (default runs/gpu-out), DEVICE (cuda, or cpu for a rehearsal).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import pydantic, gguf" 2>/dev/null && ls "$REPO"/.device/gpu/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/memreg-site \
    "$REPO"/.device/gpu/whl/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
  export PYTHONPATH=/tmp/memreg-site${PYTHONPATH:+:$PYTHONPATH}
fi
SHIM=/tmp/memreg-shim-$$
rm -rf "$SHIM" && mkdir -p "$SHIM/memreg"
for f in "$REPO"/sdk/*; do ln -s "$f" "$SHIM/memreg/$(basename "$f")"; done
for pkg in registry cli schemas; do ln -s "$REPO/$pkg" "$SHIM/memreg/$pkg"; done
export PYTHONPATH=$SHIM${PYTHONPATH:+:$PYTHONPATH}
trap 'rm -rf "$SHIM"' EXIT
if [ "${CPU_REHEARSAL:-0}" = 1 ]; then
  mkdir -p "$SHIM/nofaiss/faiss"
  echo 'raise ImportError("faiss is blocked: the GPU machine has none (bench/gpu_env.sh, CPU rehearsal)")' \
    > "$SHIM/nofaiss/faiss/__init__.py"
  export PYTHONPATH=$SHIM/nofaiss:$PYTHONPATH
  DEVICE=cpu
else
  DEVICE=${DEVICE:-cuda}
fi
OUT=${OUT:-$REPO/runs/gpu-out}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
"$PY" - <<'EOF' || { echo "environment check failed: see above" >&2; exit 1; }
import importlib.util, torch, transformers, memreg
from pathlib import Path
try:
    import faiss  # noqa: F401
    has_faiss = True
except ImportError:
    has_faiss = False
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, peft {getattr(importlib.util.find_spec('peft'), 'name', None) and __import__('peft').__version__}, "
      f"faiss importable: {has_faiss}, memreg from {Path(memreg.__file__).parent}")
EOF
