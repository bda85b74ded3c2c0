"""The human-readable model card: publish renders the manifest into the package's README.md.

The card opens with YAML metadata in the Hugging Face model-card layout, so a package mirrored to
the Hub reads well there: huggingface_hub's `ModelCardData` and `EvalResult` build and validate it
(`base_model` only when it is a Hub id; perplexities in `model-index`), imported only here, when a
card is rendered (tokenizers already depends on huggingface_hub). Every value is written as JSON
(valid YAML, quoted safely), so the bytes do not depend on a YAML library's version. The card
depends only on the package's content, never on its version, created_at or the memreg version: the
same folder published again, or as a new version, gives the same README.md bytes, so a new version
of unchanged weights still uploads nothing (the version is in memreg.json).

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
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation",
        tags=["memreg", "memory-decoder", *m.domain.labels],
        license=m.domain.license.lower() if m.domain.license else None,  # the Hub's ids are lower-case SPDX ids
        language=[m.domain.language] if m.domain.language else None,
        base_model=hub_id(m.training.init_model, _source(m, "init")) if m.training is not None else None,
        model_name=m.name, eval_results=_eval_results(m) or None,
    )
    meta: dict[str, Any] = data.to_dict()  # eval_results become the model-index the Hub reads
    meta["memreg"] = {
        "name": m.name, "tokenizer_fingerprint": m.tokenizer.digest,
        "recommended_weight": m.metrics.recommended_weight,
    }
    if (r := m.metrics.router) is not None:  # only when shipped: cards without one keep their bytes
        meta["memreg"]["router"] = {"base": r.base, "features": r.features, "gain": None if r.gain is None else round(r.gain, 4)}
    lines = ["---", *(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()), "---", ""]
    return "\n".join(lines)


def _eval_results(m: Manifest) -> list:
    """Each evaluation's held-out perplexity of the base alone and with the memory, as two metrics."""
    from huggingface_hub import EvalResult

    out = []
    for e in m.metrics.evaluations:
        # dataset_type "text": held-out text files, as the datasets library's "text" loader reads them
        common = {"task_type": "text-generation", "task_name": "Held-out perplexity", "dataset_type": "text",
                  "dataset_name": e.dataset, "metric_type": "perplexity"}
        out.append(EvalResult(**common, metric_value=round(e.perplexity_base, 4), metric_name=f"{e.base} alone"))
        out.append(EvalResult(**common, metric_value=round(e.perplexity_with_memory, 4),
                              metric_name=f"{e.base} with this memory (weight {e.weight:g})"))
    return out


def hub_id(ref: str, source: str | None) -> str | None:
    """`ref` when it can name a Hub model repository, else None. The Hub refuses a `base_model` that
    is not a repo id, so a local folder or .gguf file (as recorded at training time by `source`, or
    recognisable by its spelling in packages older than that record) is never one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source == "local" or ref.endswith(".gguf"):
        return None
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return None
    return ref


def _source(m: Manifest, role: str) -> str | None:
    """"hub" or "local": where `memreg train` found the teacher or init (None: not recorded)."""
    sources = m.training.extra.get("model_sources") if m.training is not None else None
    return sources.get(role) if isinstance(sources, dict) else None


def _body(m: Manifest) -> list[str]:
    out = [f"# {m.name}", ""]
    if m.description:
        out += [m.description, ""]
    out += [
        "A memory decoder packaged by memreg: a small causal LM trained to imitate a",
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
        *_router(m),
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


def _router(m: Manifest) -> list[str]:
    """The package's router, when it has one: the base it was fitted for (it is refused for any other),
    what it reads and what it measured. Absent otherwise, so cards without a router keep their bytes."""
    r = m.metrics.router
    if r is None:
        return []
    out = ["## Router", "",
           "This package ships a router (`router/`): per-token mixture weights instead of one fixed weight, "
           "used by `compose`, `memreg attach`, `memreg eval` and `memreg serve` when the memory is attached "
           "alone to the base it was fitted for (`--no-router` opts out). Any other base is refused before "
           "the router runs.", "",
           "| | |", "|---|---|",
           f"| fitted for | {_cell(r.base)} |",
           f"| that base's tokenizer | `{r.tokenizer}` |",
           f"| hidden size | {r.hidden_size} |",
           f"| features | {', '.join(r.features)} |",
           f"| held-out tokens | {r.held_out_tokens if r.held_out_tokens is not None else '—'} |",
           f"| perplexity, best fixed weight | {_ppl(r.perplexity_fixed)} |",
           f"| perplexity, router | {_ppl(r.perplexity_router)} |",
           f"| gain (fixed / router; above 1: the router helps) | {'—' if r.gain is None else f'{r.gain:.4f}'} |",
           ""]
    return out


def _ppl(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _training(m: Manifest) -> list[str]:
    t = m.training
    if t is None:
        return ["## Training provenance", "", "Not recorded (the package was not trained by `memreg train`).", ""]
    rows = [("teacher", _model_cell(m, "teacher", t.teacher_model)), ("initialised from", _model_cell(m, "init", t.init_model)),
            ("corpus digest", f"`{t.corpus_digest}`"),
            ("corpus tokens", t.corpus_tokens), ("datastore size", t.datastore_size), ("index", t.index),
            ("k neighbours", t.k), ("kNN temperature", _num(t.knn_temperature)),
            ("loss", f"{_num(t.beta)}·KL(p_kNN ‖ p_mem) + {_num(1 - t.beta)}·CE"), ("steps", t.steps),
            ("block size", t.block_size), ("learning rate", _num(t.learning_rate)), ("seed", t.seed),
            ("memreg", t.memreg_version)]
    return ["## Training provenance", "", "| | |", "|---|---|",
            *(f"| {k} | {_cell(str(v))} |" for k, v in rows if v is not None), ""]


def _model_cell(m: Manifest, role: str, ref: str) -> str:
    """A model reference as the card shows it: a local path says so (it is not in the metadata)."""
    return ref if hub_id(ref, _source(m, role)) else f"{ref} (a local path, on the machine that trained it)"


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

    from memreg.core.fsutil import atomic_write_bytes

    existing = Path(folder) / README
    author = author_notes(existing.read_text(encoding="utf-8", errors="replace")) if existing.is_file() else ""
    text = render_readme(m, author).encode("utf-8")
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / f"{hashlib.sha256(text).hexdigest()}.md"
    if not local.is_file():
        atomic_write_bytes(local, text)
    return README, local


def with_model_card(folder: Path, files: list, entries: list, manifest: Manifest,
                    staging: Path) -> tuple[list, list, Manifest]:
    """The package's files and manifest with README.md replaced by the card rendered from `manifest`
    (written under `staging`, which the caller removes once the card is uploaded)."""
    from memreg.core.fsutil import file_digest
    from memreg.registry.package import LocalFile
    from memreg.schemas import FileEntry

    files = [f for f in files if f.path != README]
    entries = [e for e in entries if e.path != README]
    bare = manifest.model_copy(update={"model": manifest.model.model_copy(update={"files": entries})})
    path, local = card_file(folder, bare, staging)
    size = local.stat().st_size
    files.append(LocalFile(path, local, size))
    entries.append(FileEntry(path=path, digest=file_digest(local), size=size))
    return files, entries, manifest.model_copy(update={"model": manifest.model.model_copy(update={"files": entries})})
