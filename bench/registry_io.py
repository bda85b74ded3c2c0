"""Registry I/O, measured in one run (ratios only mean something within a run on a shared machine).

    python bench/registry_io.py [--size-mb 200] [--repeats 3] [--only io,list,cold,latency]
                                [--latency-ms 20] [--versions 1000,10000]
    python bench/registry_io.py --only latency --versions 1000     # the latency section alone

1. publish / pull of a ~200 MB package (a real GPT-2-shaped model, random weights) on a local folder
   and on an S3 endpoint (moto's HTTP server on loopback), against a plain fsspec copy of the same
   bytes: ratio = plain time / memreg time (1.0 = as fast as copying; goal >= 0.8). memreg also
   hashes every byte (publish) and verifies it (pull), which the plain copy does not.
2. `memreg list` over 1,000 published versions (100 names x 10 versions) on a local folder.
3. cold start: `python -m memreg list` against `python -c pass`.
4. latency (S3 with a fixed delay on every HTTP request): for each N in --versions, a fresh moto
   server, one real tiny package published with `memreg publish`, then the registry filled to N
   versions over --names names (N/names versions each, 1.0.0 … 1.0.<N/names - 1>) by put_object of
   copies of that manifest straight into the bucket (all reference the same blobs). Then whole CLI
   commands, each a fresh `python -m memreg … --json` process talking to S3 through
   bench/latency_proxy.py (--latency-ms before each request is forwarded; it counts the requests):
   the first `list` after the fill (a reader may build caches or indexes then), `list`, `list --all`,
   `show NAME`, `pull NAME` with the package already cached, `pull NAME@VERSION` into an empty
   MEMREG_HOME; --latency-repeats runs each, median seconds and requests per command, and the
   server's own time (summed over the requests: request forwarded to first byte of its answer; the
   part of each command that is moto's work, not memreg's and not the injected delay).
memreg's own modules are byte-compiled first, as an install has them (see byte_compile).
Writes bench/results/registry_io.json, updating only the keys of the sections it ran (latency:
"s3_latency", one entry per N under "by_versions").
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
    out = json.loads(subprocess.run(cmd_all, capture_output=True, check=True).stdout)
    n = len(out["data"] if isinstance(out, dict) and "data" in out else out)  # --json prints an envelope
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


SECTIONS = ("io", "list", "cold", "latency")
RESULTS = REPO / "bench" / "results" / "registry_io.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay added to every S3 request (latency)")
    ap.add_argument("--versions", default="1000,10000", help="total version counts N (latency)")
    ap.add_argument("--names", type=int, default=50, help="package names the N versions are spread over (latency)")
    ap.add_argument("--latency-repeats", type=int, default=3, help="runs of each timed command (latency)")
    ap.add_argument("--fill-threads", type=int, default=16, help="parallel put_object while filling (latency)")
    args = ap.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := set(only) - set(SECTIONS):
        ap.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    versions = [int(v) for v in args.versions.split(",") if v.strip()]
    if any(n < args.names or n % args.names for n in versions):
        ap.error(f"--versions: each N must be a multiple of --names ({args.names})")
    scratch = Path(tempfile.mkdtemp(prefix="memreg-bench-"))
    os.environ["MEMREG_HOME"] = str(scratch / "home")
    byte_compile()
    results: dict = {}
    try:
        if "io" in only:
            pkg = build_package(scratch / "pkg", args.size_mb)
            results["local"] = io_ratios(str(scratch / "local"), pkg, scratch, args.repeats, {})
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
            os.environ.pop("AWS_ENDPOINT_URL")
        if "list" in only:
            results["list"] = list_bench(scratch, _tiny(scratch))
        if "cold" in only:
            results["cold_start"] = cold_start(scratch)
        if "latency" in only:
            tiny = scratch / "tiny" if (scratch / "tiny").exists() else _tiny(scratch)
            results["s3_latency"] = latency_bench(scratch, tiny, versions, delay_ms=args.latency_ms, names=args.names,
                                                  repeats=args.latency_repeats, fill_threads=args.fill_threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(results)
    for where in ("local", "s3_moto"):
        if where not in results:
            continue
        r = results[where]
        print(f"{where:8s} {r['bytes'] / 1e6:.0f} MB  publish {r['median_seconds']['publish']:.2f}s "
              f"(plain put {r['median_seconds']['plain_put']:.2f}s, ratio {r['publish_ratio']:.2f})  "
              f"pull {r['median_seconds']['pull']:.2f}s (plain get {r['median_seconds']['plain_get']:.2f}s, "
              f"ratio {r['pull_ratio']:.2f})")
    if li := results.get("list"):
        print(f"list     {li['versions']} versions: latest-per-name {li['list_latest_seconds']:.2f}s, --all {li['list_all_seconds']:.2f}s (whole process)")
    if cs := results.get("cold_start"):
        print(f"cold     memreg list {cs['memreg_list_seconds']:.2f}s vs python -c pass {cs['python_pass_seconds']:.2f}s: +{cs['extra_seconds']:.2f}s")
    if lat := results.get("s3_latency"):
        print_latency(lat)


def byte_compile() -> None:
    """memreg's modules as an install has them: byte-compiled (pip compiles at install time). A
    checkout run where PYTHONDONTWRITEBYTECODE=1 is set (this machine sets it) would otherwise
    compile memreg's ~35 modules from source in every timed process, ~0.08 s no installed memreg pays."""
    import compileall

    for folder in ("sdk", "registry", "cli", "schemas"):
        compileall.compile_dir(REPO / folder, quiet=1)


def write_results(results: dict) -> None:
    """Update bench/results/registry_io.json with the sections that ran, keeping the others (and,
    for s3_latency at the same delay, the entries of other version counts)."""
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    new = results.get("s3_latency")
    prev = old.get("s3_latency")
    if new and prev and prev.get("delay_ms") == new["delay_ms"] and prev.get("names") == new["names"]:
        new["by_versions"] = {**prev.get("by_versions", {}), **new["by_versions"]}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({**old, **results}, indent=2) + "\n")


# --- 4. latency-injected S3 ----------------------------------------------------------------
LAT_BUCKET = "memreg-latency"
LAT_PREFIX = "reg"


def latency_bench(scratch: Path, tiny: Path, versions: list[int], *, delay_ms: float, names: int, repeats: int,
                  fill_threads: int) -> dict:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    out = {"delay_ms": delay_ms, "names": names, "repeats": repeats, "memreg_byte_compiled": True, "by_versions": {}}
    for n in versions:
        code = _code_state()
        out["by_versions"][str(n)] = _latency_one(scratch / f"lat-{n}", tiny, n, delay_s=delay_ms / 1000, names=names,
                                                  repeats=repeats, fill_threads=fill_threads)
        out["by_versions"][str(n)]["code"] = code
    return out


def _code_state() -> dict:
    """The commit measured and the files that differed from it (the registry code may be mid-change)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "changed": [line[3:] for line in git("status", "--porcelain", "--", "registry", "cli", "schemas").splitlines()]}


def _latency_one(work: Path, tiny: Path, n: int, *, delay_s: float, names: int, repeats: int, fill_threads: int) -> dict:
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import latency_proxy

    t_all = time.perf_counter()
    work.mkdir(parents=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = None
    try:
        host, port = server.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=moto_url,
                          config=Config(max_pool_connections=fill_threads, retries={"max_attempts": 3}))
        s3.create_bucket(Bucket=LAT_BUCKET)
        check = latency_proxy.self_check(host, port, LAT_BUCKET, delay_s)
        url = f"s3://{LAT_BUCKET}/{LAT_PREFIX}"

        def cli(*args: str, endpoint: str, home: Path) -> subprocess.CompletedProcess:
            env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "MEMREG_HOME": str(home)}
            env.pop("MEMREG_REGISTRY", None)
            where = [url] if args[0] == "init" else ["--registry", url]  # init takes the URL as its argument
            proc = subprocess.run([sys.executable, "-m", "memreg", *args, *where, "-o", f"endpoint_url={endpoint}",
                                   "--json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"memreg {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            return proc

        # setup straight against moto: init, one real publish, then the fill around memreg
        t = time.perf_counter()
        cli("init", endpoint=moto_url, home=work / "home-setup")
        first = "pkg-00"
        cli("publish", str(tiny), "--name", first, "--version", "1.0.0", endpoint=moto_url, home=work / "home-setup")
        publish_s = time.perf_counter() - t
        doc = json.loads(s3.get_object(Bucket=LAT_BUCKET, Key=f"{LAT_PREFIX}/packages/{first}/1.0.0.json")["Body"].read())
        per = n // names
        todo = [(f"pkg-{i:02d}", f"1.0.{j}") for i in range(names) for j in range(per) if (i, j) != (0, 0)]

        def put(nv: tuple[str, str]) -> None:
            s3.put_object(Bucket=LAT_BUCKET, Key=f"{LAT_PREFIX}/packages/{nv[0]}/{nv[1]}.json",
                          Body=json.dumps({**doc, "name": nv[0], "version": nv[1]}, indent=2).encode(),
                          ContentType="application/json")

        from concurrent.futures import ThreadPoolExecutor

        t = time.perf_counter()
        with ThreadPoolExecutor(fill_threads) as pool:
            list(pool.map(put, todo))
        fill_s = time.perf_counter() - t
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=LAT_BUCKET, Prefix=f"{LAT_PREFIX}/packages/")
        found = sum(1 for page in pages for o in page.get("Contents", [])
                    if o["Key"].count("/") == 3 and o["Key"].endswith(".json"))
        assert found == n, f"filled {found} manifests, wanted {n}"
        print(f"[latency N={n}] publish {publish_s:.1f}s, fill {len(todo)} put_object {fill_s:.1f}s", file=sys.stderr)

        # timed commands, through the proxy
        proxy = latency_proxy.start(host, port, delay_s)
        name, version = f"pkg-{names - 1:02d}", f"1.0.{per // 2}"
        rows: dict[str, dict] = {}

        def timed_cli(label: str, *args: str, home: Path, expect=None) -> None:
            proxy.requests.reset()
            t = time.perf_counter()
            proc = cli(*args, endpoint=proxy.url, home=home)
            secs = time.perf_counter() - t
            lines, server_s = proxy.requests.lines(), proxy.requests.server_seconds
            proxy.requests.reset()
            if expect is not None:
                expect(json.loads(proc.stdout))
            row = rows.setdefault(label, {"seconds": [], "requests": [], "requests_by_kind": [], "server_seconds": []})
            row["seconds"].append(secs)
            row["server_seconds"].append(server_s)
            row["requests"].append(len(lines))
            row["requests_by_kind"].append(_kinds(lines))

        def n_items(k: int):
            def check(out) -> None:
                items = out["data"] if isinstance(out, dict) and "data" in out else out
                assert len(items) == k, f"{len(items)} packages listed, wanted {k}"
            return check

        def timed_process(label: str, argv: list[str]) -> None:
            """A process that makes no registry request (its count, which must be 0, is recorded)."""
            t = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True, cwd=REPO, env={**os.environ, "AWS_ENDPOINT_URL": proxy.url})
            row = rows.setdefault(label, {"seconds": [], "requests": [], "requests_by_kind": []})
            row["seconds"].append(time.perf_counter() - t)
            row["requests"].append(proxy.requests.reset())
            row["requests_by_kind"].append({})

        home = work / "home-read"
        for _ in range(repeats):  # the process alone: interpreter, imports, no request
            timed_process("startup (memreg --version)", [sys.executable, "-m", "memreg", "--version"])
        for _ in range(repeats):  # the floor of every S3 command: the CLI's imports, s3fs's and its client
            timed_process("floor (imports + S3 client)", [sys.executable, "-c", _S3_FLOOR])
        # The fill went around memreg, so no package index knows those manifests yet (list would show
        # only the published one): rebuild them once, as an operator would after such a copy.
        timed_cli("verify --repair (once, after the fill)", "verify", "--repair", home=home)
        timed_cli("first list", "list", home=home, expect=n_items(names))
        for _ in range(repeats):
            timed_cli("list", "list", home=home, expect=n_items(names))
        for _ in range(repeats):
            timed_cli("list --all", "list", "--all", home=home, expect=n_items(n))
        for _ in range(repeats):
            timed_cli("show NAME", "show", name, home=home)
        timed_cli("pull NAME (first pull)", "pull", name, home=home)
        for _ in range(repeats):
            timed_cli("pull NAME (cached)", "pull", name, home=home)
        for r in range(repeats):
            timed_cli("pull NAME@VERSION (cold)", "pull", f"{name}@{version}", home=work / f"home-cold-{r}")
        assert proxy.unparsed == 0, "the proxy met bytes it could not parse as HTTP requests"
        for row in rows.values():
            row["median_seconds"] = statistics.median(row["seconds"])
            row["median_requests"] = statistics.median(row["requests"])
            if row.get("server_seconds"):
                row["median_server_seconds"] = statistics.median(row["server_seconds"])
        return {"versions": n, "names": names, "per_name": per, "show_pull_name": name, "cold_pull_version": version,
                "publish_seconds": publish_s, "fill_puts": len(todo), "fill_seconds": fill_s,
                "fill_threads": fill_threads, "proxy_self_check": check, "commands": rows,
                "total_seconds": time.perf_counter() - t_all}
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


# what any memreg command on S3 pays before its first request: imports, then the store's document
# client (botocore loads and parses the S3 service model and endpoint rules); s3fs is not imported,
# as in the commands that read only documents (list, show, a cached pull)
_S3_FLOOR = ("import memreg.cli.main, memreg.registry.api\n"
             "from memreg.registry.store import open_store\n"
             f"open_store('s3://{LAT_BUCKET}/{LAT_PREFIX}').client")


def _kinds(lines: list[tuple[str, str]]) -> dict[str, int]:
    """Requests by kind: LIST (ListObjects), else METHOD and the registry area of the key
    (packages, index, blobs, the marker, …)."""
    out: dict[str, int] = {}
    for method, target in lines:
        path, _, query = target.partition("?")
        _bucket, _, key = path.lstrip("/").partition("/")
        if not key:
            kind = "LIST" if method == "GET" and ("list-type" in query or "prefix" in query or not query) \
                else f"{method} bucket?{query.split('=')[0]}"
        else:
            rel = key[len(LAT_PREFIX) + 1:] if key.startswith(LAT_PREFIX + "/") else key
            area = rel.split("/", 1)[0]
            if area == "packages" and "/tags/" in rel:
                area = "packages/*/tags"
            elif area == "packages" and "/yanked/" in rel:
                area = "packages/*/yanked"
            kind = f"{method} {area}"
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def print_latency(lat: dict) -> None:
    for n, r in lat["by_versions"].items():
        print(f"\nS3 (moto) + {lat['delay_ms']:g} ms per request: {n} versions ({r['names']} names x {r['per_name']}); "
              f"publish {r['publish_seconds']:.1f}s, fill {r['fill_puts']} put_object in {r['fill_seconds']:.1f}s "
              f"({r['fill_threads']} threads), whole run {r['total_seconds']:.0f}s")
        print(f"{'command':28s} {'median s':>9s} {'requests':>9s} {'server s':>9s}  by kind (one run)")
        for label, row in r["commands"].items():
            kinds = ", ".join(f"{k} {v}" for k, v in row["requests_by_kind"][-1].items())
            reqs = "/".join(str(x) for x in sorted(set(row["requests"])))
            server = f"{row['median_server_seconds']:9.2f}" if "median_server_seconds" in row else f"{'':9s}"
            print(f"{label:28s} {row['median_seconds']:9.2f} {reqs:>9s} {server}  {kinds}")


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
