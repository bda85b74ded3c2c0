"""The `--json` output of the `memreg` CLI: one envelope for every command.

    {"ok": true,  "command": "list", "data": <the command's result>, "warnings": ["..."]}
    {"ok": false, "command": "show", "data": null, "warnings": [],
     "error": {"type": "ManifestNotFoundError", "message": "...", "exit_code": 1}}

A success goes to stdout; a failure goes to stderr as one line (stdout stays empty), except
`verify`, whose failed report is data (stdout, ok false, exit 1). `data` is described below for the
registry commands; the ML commands (`train`, `attach`, `eval`, `tune`, `convert-gguf`) and `cache`
return an object of their own, documented in their --help. The schema is
schemas/json/cli-output.schema.json; a test validates each command's output against it.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CliError(_Strict):
    type: str = Field(description="the error's class name, e.g. ManifestNotFoundError, UsageError")
    message: str = Field(description="one line: what was wrong and what to do next")
    exit_code: int = Field(description="1 error, 2 usage error, 130 interrupted")


class PackageRow(_Strict):
    name: str
    version: str
    description: str
    domain: list[str]
    parameters: int
    size: int = Field(description="bytes of all files")
    tokenizer: str = Field(description="tokenizer fingerprint, sha256:…")
    recommended_weight: Optional[float]
    yanked: bool
    tags: list[str]


class InitData(_Strict):
    registry: str


class PublishData(PackageRow):
    created: bool
    uploaded_blobs: int
    skipped_blobs: int
    tags_moved: dict[str, Optional[str]] = Field(description="tag -> the version it pointed at before (null: new)")
    registry: str
    signed_by: Optional[str] = Field(None, description="with --sign-key: the signing key's fingerprint")


class PullData(_Strict):
    ref: str
    path: str = Field(description="the local package folder")
    yanked: bool = Field(description="true: the version is yanked (a warning says so too)")


class SignatureRow(_Strict):
    signature: str = Field(description="sha256 of the signature document (its name)")
    key_fingerprint: Optional[str] = Field(description="sha256 of the signer's PEM public key, as the signer said")
    signed_at: Optional[str] = Field(description="when, as the signer said")
    verified: bool = Field(description="a key you trust verifies it for this very version")
    note: str


class ShowData(_Strict):
    manifest: dict[str, Any] = Field(description="the manifest (schemas/json/manifest.schema.json)")
    versions: list[str]
    yanked: list[str]
    tags: dict[str, str]
    signatures: list[SignatureRow] = Field([], description="the version's signatures (memreg sign)")
    yank: Optional[dict[str, Any]] = Field(None, description="the shown version's yank record (reason, yanked_at), when it is yanked")


class VerifyData(_Strict):
    versions: list[str]
    blobs: int
    problems: list[str]
    indexes_rebuilt: list[str] = []  # package names whose index --repair rewrote
    signed_by: Optional[list[str]] = Field(None, description="with --public-key: fingerprints of the trusted keys "
                                                              "whose signature of the version holds")


class TagData(_Strict):
    name: str
    tag: str
    version: str
    previous: Optional[str]


class YankData(_Strict):
    ref: str
    yanked: bool


class GcData(_Strict):
    removed_blobs: list[str]
    removed_bytes: int
    kept_recent: int
    removed_uploads: list[str]
    dry_run: bool


class _Ok(_Strict):
    ok: Literal[True]
    warnings: list[str]


class InitOutput(_Ok):
    command: Literal["init"]
    data: InitData


class PublishOutput(_Ok):
    command: Literal["publish"]
    data: PublishData


class PullOutput(_Ok):
    command: Literal["pull"]
    data: PullData


class ListOutput(_Ok):
    command: Literal["list"]
    data: list[PackageRow]


class ShowOutput(_Ok):
    command: Literal["show"]
    data: ShowData


class VerifyOutput(_Strict):
    ok: bool
    command: Literal["verify"]
    data: VerifyData
    warnings: list[str]
    error: Optional[CliError] = None


class TagOutput(_Ok):
    command: Literal["tag"]
    data: TagData


class YankOutput(_Ok):
    command: Literal["yank", "unyank"]
    data: YankData


class GcOutput(_Ok):
    command: Literal["gc"]
    data: GcData


class SignData(_Strict):
    ref: str
    key_fingerprint: str = Field(description="sha256 of the signer's PEM public key")
    signatures: int = Field(description="signatures the version now carries")


class SignOutput(_Ok):
    command: Literal["sign"]
    data: SignData


class OtherOutput(_Ok):
    """train, attach, eval, tune, convert-gguf, cache: an object of the command's own."""

    command: Literal["train", "attach", "eval", "tune", "convert-gguf", "cache"]
    data: dict[str, Any]


class ErrorOutput(_Strict):
    ok: Literal[False]
    command: Optional[str] = Field(description="null when no command was recognised (e.g. a misspelt one)")
    data: None = None
    warnings: list[str]
    error: CliError


class CliOutput(RootModel[Union[InitOutput, PublishOutput, PullOutput, ListOutput, ShowOutput, VerifyOutput, SignOutput,
                                TagOutput, YankOutput, GcOutput, OtherOutput, ErrorOutput]]):
    """What `memreg COMMAND --json` prints: one of these, chosen by `command` and `ok`."""
