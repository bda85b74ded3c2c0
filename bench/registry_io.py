"""Registry I/O, measured in one run (ratios only mean something within a run on a shared machine).

    python bench/registry_io.py [--size-mb 200] [--repeats 3]

1. publish / pull of a ~200 MB package (a real GPT-2-shaped model, random weights) on a local folder
   and on an S3 endpoint (moto's HTTP server on loopback), against a plain fsspec copy of the same
   bytes: ratio = plain time / memreg time (1.0 = as fast as copying; goal >= 0.8). memreg also
   hashes every byte (publish) and verifies it (pull), which the plain copy does not.
2. `memreg list` over 1,000 published versions (100 names x 10 versions) on a local folder.
3. cold start: `python -m memreg list` against `python -c pass`.
Writes bench/results/registry_io.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_package(dest: Path, size_mb: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(REPO / "models" / "memreg-tokenizer")
    layers = max(1, round((size_mb * 2**20 / 4 - len(tok) * 768) / (12 * 768 * 768)))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=768, n_layer=layers, n_head=12, n_positions=512,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def io_ratios(url: str, pkg: Path, scratch: Path, repeats: int, storage_options: dict) -> dict:
    import fsspec

    from memreg.registry import Registry
    from memreg.registry.cache import Cache

    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    files = [p for p in sorted(pkg.iterdir()) if p.is_file()]
    rows = {"publish": [], "plain_put": [], "pull": [], "plain_get": []}
    for r in range(repeats):
        plain = f"{root}/plain-{r}"
        fs.makedirs(plain, exist_ok=True)
        rows["plain_put"].append(timed(lambda: [fs.put_file(str(p), f"{plain}/{p.name}") for p in files]))
        out = scratch / f"get-{r}"
        out.mkdir()
        rows["plain_get"].append(timed(lambda: [fs.get_file(f"{plain}/{p.name}", str(out / p.name)) for p in files]))
        reg = Registry.init(f"{url}/registry-{r}", storage_options=storage_options)
        reg.cache = Cache(scratch / f"cache-{r}")
        rows["publish"].append(timed(lambda: reg.publish(pkg, name="big", version="1.0.0")))
        rows["pull"].append(timed(lambda: reg.pull("big@1.0.0")))
        shutil.rmtree(out)
        shutil.rmtree(scratch / f"cache-{r}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    size = sum(p.stat().st_size for p in files)
    return {
        "bytes": size,
        "median_seconds": med,
        "publish_ratio": med["plain_put"] / med["publish"],
        "pull_ratio": med["plain_get"] / med["pull"],
        "publish_MBps": size / med["publish"] / 1e6,
        "pull_MBps": size / med["pull"] / 1e6,
    }


def list_bench(scratch: Path, pkg_small: Path) -> dict:
    from memreg.registry import Registry
    from memreg.registry.api import manifest_key

    url = str(scratch / "many")
    reg = Registry.init(url)
    base = reg.publish(pkg_small, name="n000", version="1.0.0").manifest
    for i in range(100):
        for j in range(10):
            if i == 0 and j == 0:
                continue
            m = base.model_copy(update={"name": f"n{i:03d}", "version": f"1.{j}.0"})
            reg.store.create(manifest_key(m.name, m.version), m.model_dump_json(indent=2).encode())
    cmd = [sys.executable, "-m", "memreg", "list", "--registry", url, "--json"]
    cmd_all = [*cmd, "--all"]
    t_latest = [timed(lambda: subprocess.run(cmd, capture_output=True, check=True)) for _ in range(3)]
    t_all = [timed(lambda: subprocess.run(cmd_all, capture_output=True, check=True)) for _ in range(3)]
    n = len(json.loads(subprocess.run(cmd_all, capture_output=True, check=True).stdout))
    return {"versions": n, "list_latest_seconds": statistics.median(t_latest),
            "list_all_seconds": statistics.median(t_all)}


def cold_start(scratch: Path) -> dict:
    url = str(scratch / "empty")
    subprocess.run([sys.executable, "-m", "memreg", "init", url], check=True, capture_output=True)
    a, b = [], []
    for _ in range(7):  # interleaved, so drift hits both alike
        a.append(timed(lambda: subprocess.run([sys.executable, "-m", "memreg", "list", "--registry", url],
                                               check=True, capture_output=True)))
        b.append(timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)))
    return {"memreg_list_seconds": statistics.median(a), "python_pass_seconds": statistics.median(b),
            "extra_seconds": statistics.median(a) - statistics.median(b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="memreg-bench-"))
    os.environ["MEMREG_HOME"] = str(scratch / "home")
    try:
        pkg = build_package(scratch / "pkg", args.size_mb)
        results = {"local": io_ratios(str(scratch / "local"), pkg, scratch, args.repeats, {})}
        from moto.server import ThreadedMotoServer
        import boto3

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://{host}:{port}")
        boto3.client("s3").create_bucket(Bucket="memreg-bench")
        results["s3_moto"] = io_ratios("s3://memreg-bench/reg", pkg, scratch, args.repeats, {})
        server.stop()
        results["list"] = list_bench(scratch, _tiny(scratch))
        results["cold_start"] = cold_start(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = REPO / "bench" / "results" / "registry_io.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for where in ("local", "s3_moto"):
        r = results[where]
        print(f"{where:8s} {r['bytes'] / 1e6:.0f} MB  publish {r['median_seconds']['publish']:.2f}s "
              f"(plain put {r['median_seconds']['plain_put']:.2f}s, ratio {r['publish_ratio']:.2f})  "
              f"pull {r['median_seconds']['pull']:.2f}s (plain get {r['median_seconds']['plain_get']:.2f}s, "
              f"ratio {r['pull_ratio']:.2f})")
    li, cs = results["list"], results["cold_start"]
    print(f"list     {li['versions']} versions: latest-per-name {li['list_latest_seconds']:.2f}s, --all {li['list_all_seconds']:.2f}s (whole process)")
    print(f"cold     memreg list {cs['memreg_list_seconds']:.2f}s vs python -c pass {cs['python_pass_seconds']:.2f}s: +{cs['extra_seconds']:.2f}s")


def _tiny(scratch: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(REPO / "models" / "memreg-tokenizer")
    torch.manual_seed(0)
    dest = scratch / "tiny"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


if __name__ == "__main__":
    main()
