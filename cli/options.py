"""Reusable typed options, defined once."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

RegistryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--registry", "-r", envvar="MEMREG_REGISTRY", show_envvar=True,
        help="Registry URL: a folder, file://, memory://, s3://bucket/prefix, … Default: a local registry under $MEMREG_HOME.",
    ),
]
StorageOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option", "-o", metavar="KEY=VALUE",
        help="fsspec storage option, repeatable (e.g. -o endpoint_url=http://127.0.0.1:9000 -o anon=false). "
        "S3 credentials and endpoint also come the standard AWS way (AWS_PROFILE, AWS_ENDPOINT_URL, …).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout, no bars.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON (true, 3, {"a":1}) is used as such."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--storage-option")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    if "endpoint_url" in out:  # s3fs wants it inside client_kwargs
        out.setdefault("client_kwargs", {})["endpoint_url"] = out.pop("endpoint_url")
    from memreg.core.errors import InvalidArgumentError
    from memreg.registry.store.s3 import check_limits

    try:  # memreg's own limits (retries, deadline): a bad value is a usage error, before anything opens
        check_limits(out)
    except InvalidArgumentError as e:
        raise typer.BadParameter(str(e), param_hint="--storage-option") from None
    return out


def usage_error(message: str) -> Exception:
    """click's UsageError as the app raises it: exit 2 with the command's usage hint. typer >= 0.16
    vendors its own click (see main._click_exception_types), whose class is the one that counts."""
    try:
        from typer._click.exceptions import UsageError
    except ImportError:  # a typer that uses the installed click
        from click.exceptions import UsageError
    return UsageError(message)
