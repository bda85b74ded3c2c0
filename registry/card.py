"""The human-readable model card: publish renders the manifest into the package's README.md.

The card opens with YAML metadata in the Hugging Face model-card layout (what
`huggingface_hub.ModelCard` reads), so a package mirrored to the Hub reads well there; memreg does
not depend on huggingface_hub, so the YAML is written here, every value as JSON (valid YAML, quoted
safely). The card depends only on the package's content, never on its version, created_at or the
memreg version: the same folder published again, or as a new version, gives the same README.md
bytes, so a new version of unchanged weights still uploads nothing (the version is in memreg.json).

A README.md the author put in the folder is kept, below the generated part; a card memreg generated
earlier (a pulled package published again, e.g. by `memreg tune --write`) is replaced, not nested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memreg.schemas import Manifest

README = "README.md"
_GENERATED = "<!-- memreg:card — generated from the manifest by `memreg publish`; edits go below the author marker -->"
_AUTHOR = "<!-- memreg:author -->"


def author_notes(text: str) -> str:
    """The author's own part of a README: all of it, or what follows the marker in a generated card."""
    if _GENERATED not in text:
        return text.strip()
    _, sep, after = text.partition(_AUTHOR)
    return after.strip() if sep else ""


def render_readme(m: Manifest, author: str = "") -> str:
    """README.md for `m` (whose files are listed without the README itself)."""
    parts = [_front_matter(m), _GENERATED, *_body(m)]
    parts += ["", _AUTHOR, "", "## From the author", "", author] if author else ["", _AUTHOR]
    return "\n".join(parts).rstrip() + "\n"


def _front_matter(m: Manifest) -> str:
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["memreg", "memory-decoder", *m.domain.labels],
    }
    if m.domain.license:
        meta["license"] = m.domain.license.lower()  # the Hub's ids are lower-case SPDX ids
    if m.domain.language:
        meta["language"] = [m.domain.language]
    if m.training is not None:
        meta["base_model"] = m.training.init_model
    meta["memreg"] = {
        "name": m.name, "tokenizer_fingerprint": m.tokenizer.digest,
        "recommended_weight": m.metrics.recommended_weight,
    }
    lines = ["---", *(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()), "---", ""]
    return "\n".join(lines)


def _body(m: Manifest) -> list[str]:
    out = [f"# {m.name}", ""]
    if m.description:
        out += [m.description, ""]
    out += [
        "A memory decoder packaged by [memreg](https://memreg.dev): a small causal LM trained to imitate a",
        "kNN retriever over a domain corpus. It plugs into any base model that shares its tokenizer; their",
        "next-token distributions are mixed, p = (1 − w)·p_base + w·p_memory.",
        "",
        "| | |", "|---|---|",
        f"| domain | {', '.join(m.domain.labels) or '—'} |",
        f"| language | {m.domain.language or '—'} |",
        f"| licence | {m.domain.license or '—'} |",
        f"| corpus | {_cell(m.domain.corpus or '—')} |",
        f"| recommended weight | {_num(m.metrics.recommended_weight)} |",
        "",
        *_how_to_attach(m),
        *_tokenizer(m),
        *_evaluation(m),
        *_training(m),
        *_model(m),
    ]
    return out


def _how_to_attach(m: Manifest) -> list[str]:
    weight = m.metrics.recommended_weight
    spec = m.name if weight is not None else f"{m.name}=0.3"
    return [
        "## How to attach", "",
        "```bash",
        f"memreg pull {m.name}  # or {m.name}@VERSION: `memreg show {m.name}` lists them",
        f"memreg attach BASE_MODEL {spec} --prompt \"...\"",
        f"memreg eval BASE_MODEL --memory {spec} --data held-out.txt",
        "```", "",
        "```python",
        "from memreg import compose",
        "",
        f"model = compose(\"BASE_MODEL\", [\"{m.name}\"]" + (")" if weight is not None else ", [0.3])")
        + ("  # the recommended weight" if weight is not None else "  # no recommended weight: choose one, or weights=\"auto\""),
        "```", "",
        "BASE_MODEL is any causal LM whose tokenizer has the fingerprint below "
        "(`memreg list --compatible-with BASE_MODEL` lists the memories that fit a base); any other is "
        "refused before a weight is read.", "",
    ]


def _tokenizer(m: Manifest) -> list[str]:
    t = m.tokenizer
    return [
        "## Tokenizer", "",
        f"- fingerprint `{t.digest}` ({t.algorithm})",
        f"- {t.model_type}, {t.vocab_size} tokens; the model has {m.model.embedding_rows} embedding rows",
        "",
    ]


def _evaluation(m: Manifest) -> list[str]:
    out = ["## Evaluation", ""]
    if not m.metrics.evaluations:
        return out + ["No evaluation recorded.", ""]
    out += ["| base | data | tokens | perplexity alone | with this memory | weight |", "|---|---|---:|---:|---:|---:|"]
    for e in m.metrics.evaluations:
        out.append(f"| {_cell(e.base)} | {_cell(e.dataset)} | {e.tokens} | {e.perplexity_base:.2f} | "
                   f"{e.perplexity_with_memory:.2f} | {e.weight:g} |")
    return out + [""]


def _training(m: Manifest) -> list[str]:
    t = m.training
    if t is None:
        return ["## Training provenance", "", "Not recorded (the package was not trained by `memreg train`).", ""]
    rows = [("teacher", t.teacher_model), ("initialised from", t.init_model), ("corpus digest", f"`{t.corpus_digest}`"),
            ("corpus tokens", t.corpus_tokens), ("datastore size", t.datastore_size), ("index", t.index),
            ("k neighbours", t.k), ("kNN temperature", _num(t.knn_temperature)),
            ("loss", f"{_num(t.beta)}·KL(p_kNN ‖ p_mem) + {_num(1 - t.beta)}·CE"), ("steps", t.steps),
            ("block size", t.block_size), ("learning rate", _num(t.learning_rate)), ("seed", t.seed),
            ("memreg", t.memreg_version)]
    return ["## Training provenance", "", "| | |", "|---|---|",
            *(f"| {k} | {_cell(str(v))} |" for k, v in rows if v is not None), ""]


def _model(m: Manifest) -> list[str]:
    info = m.model
    out = ["## Files", "", f"{info.architecture}, {info.parameter_count:,} parameters, {info.dtype}.", "",
           "| file | bytes | sha256 |", "|---|---:|---|"]
    out += [f"| {_cell(f.path)} | {f.size} | `{f.hex}` |" for f in info.files if f.path != README]
    return out + [""]


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def card_file(folder: Path, m: Manifest, staging: Path) -> tuple[str, Path]:
    """(path in the package, local file) of the rendered README.md for the manifest `m`, written
    under `staging` by its content hash (so re-publishing finds the same bytes)."""
    import hashlib

    from memreg.registry.fsutil import atomic_write_bytes

    existing = Path(folder) / README
    author = author_notes(existing.read_text(encoding="utf-8", errors="replace")) if existing.is_file() else ""
    text = render_readme(m, author).encode("utf-8")
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / f"{hashlib.sha256(text).hexdigest()}.md"
    if not local.is_file():
        atomic_write_bytes(local, text)
    return README, local


def with_model_card(folder: Path, files: list, entries: list, manifest: Manifest) -> tuple[list, list, Manifest]:
    """The package's files and manifest with README.md replaced by the card rendered from `manifest`."""
    from memreg.registry.fsutil import file_digest
    from memreg.registry.package import LocalFile
    from memreg.registry.settings import memreg_home
    from memreg.schemas import FileEntry

    files = [f for f in files if f.path != README]
    entries = [e for e in entries if e.path != README]
    bare = manifest.model_copy(update={"model": manifest.model.model_copy(update={"files": entries})})
    path, local = card_file(folder, bare, memreg_home() / "cards")  # beside the cache, never in it
    size = local.stat().st_size
    files.append(LocalFile(path, local, size))
    entries.append(FileEntry(path=path, digest=file_digest(local), size=size))
    return files, entries, manifest.model_copy(update={"model": manifest.model.model_copy(update={"files": entries})})
