"""Registry commands: init, publish, pull, list, show, verify, tag, yank, unyank, gc.

Thin: parse, call memreg.registry, print. None of them imports torch or transformers.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer

from memreg.cli import output
from memreg.cli.options import JsonOpt, QuietOpt, RegistryOpt, StorageOpt, storage_options, usage_error
from memreg.cli.output import byte_progress, console, print_json, styled, warn
from memreg.cli import sign_cmds
from memreg.cli.sign_cmds import PublicKeyOpt, SignKeyOpt, TrustOpt


def _open(registry: str | None, options: list[str] | None):
    from memreg.registry import Registry

    return Registry.open(registry, storage_options=storage_options(options))


def _summary(m, *, yanked: bool = False, tags: list[str] | None = None) -> dict:
    """One line of `list --json`; `m` is a Manifest or the VersionSummary `Registry.list` gives."""
    from memreg.schemas import VersionSummary

    s = m if isinstance(m, VersionSummary) else VersionSummary.of(m)
    return {
        "name": s.name, "version": s.version, "description": s.description,
        "domain": s.domain.labels, "parameters": s.parameter_count,
        "size": s.size, "tokenizer": s.tokenizer,
        "recommended_weight": s.recommended_weight, "yanked": yanked, "tags": tags or [],
    }


def _model_fingerprint(model: str):
    """The tokenizer fingerprint of a model folder, or of a Hub id (its cached or downloaded tokenizer)."""
    from memreg.registry import fingerprint

    if Path(model).expanduser().is_dir() or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model):
        return fingerprint(model)
    from transformers import AutoTokenizer

    try:
        return fingerprint(AutoTokenizer.from_pretrained(model, trust_remote_code=False))  # never run a Hub repo's code
    except OSError as e:
        raise typer.BadParameter(f"{model} is neither a folder nor a Hub model whose tokenizer is cached or "
                                 f"reachable ({str(e).splitlines()[0]})", param_hint="--compatible-with") from None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def init(
    url: Annotated[Optional[str], typer.Argument(help="Where: a folder, s3://bucket/prefix, memory://x, … (default: the local registry).")] = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a registry at URL (no-op if one is there)."""
    from memreg.registry import Registry
    from memreg.core.settings import default_registry_url

    reg = Registry.init(url or default_registry_url(), storage_options=storage_options(storage_option))
    print_json({"registry": reg.url}) if json_ else console.print(f"registry ready at {reg.url}")


def publish(
    path: Annotated[Path, typer.Argument(help="A Hugging Face model folder: config.json, *.safetensors, tokenizer files, optional memreg.json card.")],
    name: Annotated[Optional[str], typer.Option(help="Package name (else the card's).")] = None,
    version: Annotated[Optional[str], typer.Option(help="Semantic version, e.g. 1.0.0 (else the card's).")] = None,
    description: Annotated[Optional[str], typer.Option(help="One-line description.")] = None,
    domain: Annotated[Optional[list[str]], typer.Option(help="Domain label, repeatable (replaces the card's labels).")] = None,
    language: Annotated[Optional[str], typer.Option(help="Corpus language, e.g. en.")] = None,
    license: Annotated[Optional[str], typer.Option(help="Licence of the memory, e.g. CC-BY-4.0.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="Also point these tags at the new version, repeatable.")] = None,
    sign_key: SignKeyOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Publish a memory package. Blobs first, the manifest last with an exclusive create: a crash
    leaves no half-published version; the same content again is a no-op."""
    from memreg.registry.package import read_card

    _check_publishable(path, name, version)
    reg = _open(registry, storage_option)
    if sign_key:
        sign_cmds.check_key(sign_key)  # an unusable key publishes nothing
    domain_meta = None
    if domain or language or license:
        card = read_card(path).domain
        domain_meta = card.model_copy(update={k: v for k, v in
                                              {"labels": domain, "language": language, "license": license}.items() if v})
    with byte_progress(f"publishing {path.name}", enabled=not (json_ or quiet)) as cb:
        res = reg.publish(path, name=name, version=version, description=description,
                          domain=domain_meta, tags=tag or [], callback=cb)
    m = res.manifest
    signed_by = sign_cmds.sign_version(reg, m, sign_key) if sign_key else None
    if json_:
        print_json({**_summary(m), "created": res.created, "uploaded_blobs": res.uploaded,
                    "skipped_blobs": res.skipped, "tags_moved": res.tags, "registry": reg.url, "signed_by": signed_by})
        return
    verb = "published" if res.created else "already published (same content, nothing changed):"
    console.print(f"{verb} {m.ref} to {reg.url} ({res.uploaded} blobs uploaded, {res.skipped} already there)")
    for t, prev in res.tags.items():
        console.print(f"  tag {m.name}:{t} -> {m.version}" + (f" (was {prev})" if prev else ""))
    if signed_by:
        console.print(f"  signed with key {signed_by[:16]}…")


def _check_publishable(path: Path, name: str | None, version: str | None) -> None:
    """What the registry would refuse in its own terms (name= and version=), said in the command's
    (--name, --version) as a usage error."""
    from memreg.registry.package import read_card

    if not path.is_dir():
        return  # the registry's message says what a package folder is
    card = read_card(path)
    missing = [opt for opt, value in (("--name", name or card.name), ("--version", version or card.version)) if not value]
    if missing:
        what = " and ".join(opt.removeprefix("--") for opt in missing)
        raise usage_error(f"{path} has no memreg.json card that gives the package's {what}: give {' and '.join(missing)}, "
                          "e.g. --name law --version 1.0.0")


def pull(
    ref: Annotated[str, typer.Argument(help="name, name@1.2.0 or name:tag.")],
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash every cached file of the package (default: "
                                         "size and mtime against the record kept since it was verified).")] = False,
    trust: TrustOpt = None,
    public_key: PublicKeyOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download and verify a package into the local cache; print its folder."""
    output.start("pull", json_mode=json_)  # a yanked-version warning goes into the envelope under --json
    from memreg.registry.refs import parse_ref

    reg = _open(registry, storage_option)
    m = reg.resolve(ref)
    sign_cmds.check_trust(reg, m, trust, public_key)  # before any byte is pulled
    with byte_progress(f"pulling {ref}", enabled=not (json_ or quiet)) as cb:
        path = reg.pull(m, callback=cb, verify=verify)
    r = parse_ref(ref)
    by_latest = not r.version and r.tag in (None, "latest")  # resolution skipped yanked versions already
    yanked = False if by_latest else m.version in reg.yanked(m.name)
    if yanked:  # still pullable by its exact version, but whoever pulls it should know
        warn(f"{m.ref} is yanked (`memreg show {m.ref}` says why); `memreg unyank {m.ref}` restores it")
    if json_:
        print_json({"ref": m.ref, "path": str(path), "yanked": yanked})
    else:
        print(path)


def list_(
    domain: Annotated[Optional[str], typer.Option(help="Only packages with this domain label.")] = None,
    compatible_with: Annotated[Optional[str], typer.Option(
        help="Only memories whose tokenizer matches: a model folder or a fingerprint (sha256:…).")] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Every version, yanked ones too.")] = False,
    signed_by: sign_cmds.SignedByOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List packages (the highest non-yanked version of each, or --all)."""
    reg = _open(registry, storage_option)
    fp = None
    if compatible_with:
        if compatible_with.startswith("sha256:"):
            fp = compatible_with
        else:
            fp = _model_fingerprint(compatible_with)  # whole: a memory differing only in its pad id matches too
    rows = reg.list(domain=domain, fingerprint=fp, all_versions=all_versions)
    if signed_by:
        rows = sign_cmds.signed_rows(reg, rows, signed_by)
    if json_:
        print_json([_summary(r.manifest, yanked=r.yanked, tags=r.tags) for r in rows])
        return
    from rich.table import Table

    table = Table("name", "version", "domain", "params", "size", "tags", "description", box=None)
    for r in rows:
        m = r.manifest
        table.add_row(m.name, m.version + (" (yanked)" if r.yanked else ""), ",".join(m.domain.labels),
                      f"{m.parameter_count / 1e6:.1f}M", _human(m.size), ",".join(r.tags), m.description)
    console.print(table if rows else _nothing_listed(reg, domain=domain, compatible_with=compatible_with,
                                                     all_versions=all_versions))


def _nothing_listed(reg, *, domain: str | None, compatible_with: str | None, all_versions: bool) -> str:
    """Why `list` shows no row: an empty registry, or filters that none of its packages passes."""
    n = len({r.manifest.name for r in reg.list(all_versions=all_versions)}) if domain or compatible_with else 0
    if not n:
        return f"no packages in {reg.url}"
    tests = ([f"has domain label {domain!r}"] if domain else []) + (
        [f"is compatible with {compatible_with}"] if compatible_with else [])
    versions = ", in any version" if all_versions else ""
    return f"{n} package{'s' if n > 1 else ''} in {reg.url}, none of which {' and '.join(tests)}{versions}"


def show(
    ref: Annotated[str, typer.Argument(help="name, name@1.2.0 or name:tag.")],
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show one version's manifest, and the package's versions and tags."""
    reg = _open(registry, storage_option)
    m, state = reg.show(ref)
    versions, yanked, tags = state.listed, state.yanked, state.tags
    signatures = sign_cmds.signatures_shown(reg, m)
    yank = reg.yank_record(m.name, m.version) if m.version in yanked else None
    if json_:
        print_json({"manifest": m.model_dump(mode="json"), "versions": versions, "yanked": sorted(yanked), "tags": tags,
                    "signatures": signatures, "yank": yank and yank.model_dump(mode="json", include={"reason", "yanked_at"})})
        return
    console.print(styled(m.ref, "bold"), f" {m.description}")
    console.print(f"  domain     {', '.join(m.domain.labels) or '-'}  language {m.domain.language or '-'}  licence {m.domain.license or '-'}")
    console.print(f"  model      {m.model.architecture}, {m.model.parameter_count:,} parameters, {m.model.dtype}, {m.model.embedding_rows} embedding rows")
    console.print(f"  tokenizer  {m.tokenizer.digest} ({m.tokenizer.model_type}, {m.tokenizer.vocab_size} tokens)")
    if m.training:
        t = m.training
        console.print(f"  training   teacher {t.teacher_model}, init {t.init_model}, {t.corpus_tokens:,} tokens, k={t.k}, T={t.knn_temperature:g}, beta={t.beta:g}, {t.steps} steps")
    for ev in m.metrics.evaluations:
        console.print(f"  eval       {ev.base}: ppl {ev.perplexity_base:.2f} -> {ev.perplexity_with_memory:.2f} at weight {ev.weight:g} ({ev.dataset})")
    if m.metrics.recommended_weight is not None:
        console.print(f"  weight     {m.metrics.recommended_weight:g} recommended")
    for f in m.model.files:
        console.print(f"  file       {f.path}  {_human(f.size)}  {f.digest[:19]}…")
    if m.version in yanked:
        console.print(f"  yanked     {yank.yanked_at:%Y-%m-%d %H:%M} UTC: {yank.reason or 'no reason given'}" if yank else
                      "  yanked     (no readable yank record)")
    console.print("  versions   " + ", ".join(v + (" (yanked)" if v in yanked else "") for v in versions))
    if tags:
        console.print("  tags       " + ", ".join(f"{t} -> {v}" for t, v in sorted(tags.items())))
    for sig in signatures:
        console.print(f"  signed     by {(sig['key_fingerprint'] or '?')[:16]}… at {sig['signed_at'] or '?'}: {sig['note']}")


def verify(
    ref: Annotated[Optional[str], typer.Argument(help="One version to check (default: the whole registry).")] = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    repair: Annotated[bool, typer.Option("--repair", help="Also rewrite every package index (index/<name>.json) from the manifests and tags.")] = False,
    public_key: PublicKeyOpt = None,
    save_signatures: Annotated[Optional[Path], typer.Option(help="With --public-key: write each trusted signature "
                                                            "there as a .sig file for `model_signing verify key`.")] = None,
) -> None:
    """Re-hash every blob of one version, or of the whole registry. Exit 1 on any problem.

    The package indexes that make `list` and `show` fast are caches checked against the listing on
    every read and repaired as they go; --repair rebuilds them all from the documents."""
    reg = _open(registry, storage_option)
    if public_key:  # the signatures too
        return sign_cmds.verify_signatures(reg, ref, public_key, save_signatures, json_)
    with byte_progress("verifying", enabled=not (json_ or quiet)) as cb:
        report = reg.verify(ref, callback=cb)
    rebuilt = reg.rebuild_index() if repair else []
    if json_:
        error = None if report.ok else {"type": "VerifyFailed", "exit_code": 1,
                                        "message": f"{len(report.problems)} problems: {report.problems[0]}"}
        print_json({"versions": report.checked_versions, "blobs": report.checked_blobs,
                    "problems": report.problems, "indexes_rebuilt": rebuilt}, ok=report.ok, error=error)
    else:
        for p in report.problems:
            console.print(styled("FAIL", "red"), p)
        console.print(f"{'ok' if report.ok else 'FAILED'}: {len(report.checked_versions)} versions, "
                      f"{report.checked_blobs} blobs checked, {len(report.problems)} problems"
                      + (f"; {len(rebuilt)} package indexes rebuilt" if repair else ""))
    if not report.ok:
        raise typer.Exit(1)


def tag(
    ref: Annotated[str, typer.Argument(help="The version to point at: name@1.2.0, name or name:other-tag.")],
    tag_name: Annotated[str, typer.Argument(metavar="TAG", help="Tag to move, e.g. stable.")],
    force: Annotated[bool, typer.Option("--force", help="Point the tag at the version even if it is yanked.")] = False,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Point name:TAG at a version (compare-and-swap: concurrent moves never lose an update).
    A yanked version is refused unless --force."""
    move = _open(registry, storage_option).tag(ref, tag_name, force=force)
    if json_:
        print_json({"name": move.name, "tag": move.tag, "version": move.version, "previous": move.previous})
    else:
        console.print(f"{move.name}:{move.tag} -> {move.version}" + (f" (was {move.previous})" if move.previous else ""))


def yank(
    ref: Annotated[str, typer.Argument(help="name@VERSION to hide from `name` and `name:latest`.")],
    reason: Annotated[str, typer.Option(help="Why, shown by `memreg show`.")] = "",
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Yank a version: still pullable as name@VERSION, no longer chosen by `name` or `name:latest`."""
    m = _open(registry, storage_option).yank(ref, reason)
    print_json({"ref": m.ref, "yanked": True}) if json_ else console.print(f"yanked {m.ref}")


def unyank(
    ref: Annotated[str, typer.Argument(help="name@VERSION to make choosable by `name` and `name:latest` again.")],
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Undo a yank (a no-op on a version that is not yanked)."""
    m = _open(registry, storage_option).unyank(ref)
    print_json({"ref": m.ref, "yanked": False}) if json_ else console.print(f"unyanked {m.ref}")


def gc(
    grace: Annotated[float, typer.Option(help="Only remove unreferenced blobs older than this many hours.")] = 24.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, remove nothing.")] = False,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Remove blobs no manifest references (and leftovers of interrupted uploads)."""
    if not math.isfinite(grace) or not 0 <= grace <= 24 * 365 * 100:
        raise typer.BadParameter(f"{grace:g} is not a number of hours from 0 to 876000 (e.g. --grace 24)", param_hint="--grace")
    report = _open(registry, storage_option).gc(grace=timedelta(hours=grace), dry_run=dry_run)
    if json_:
        print_json({"removed_blobs": report.removed_blobs, "removed_bytes": report.removed_bytes,
                    "kept_recent": report.kept_recent, "removed_uploads": report.removed_uploads, "dry_run": dry_run})
    else:
        verb = "would remove" if dry_run else "removed"
        console.print(f"{verb} {len(report.removed_blobs)} blobs ({_human(report.removed_bytes)}) and "
                      f"{len(report.removed_uploads)} interrupted uploads; kept {report.kept_recent} newer than {grace:g} h")
