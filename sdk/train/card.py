"""The package card (`memreg.json`) of a trained memory, from the stages' metadata.

Format 1 has typed fields for the provenance every memory has (teacher, init, corpus, k, ...) and a
free `training.extra` for the rest; the learning curve, the validation perplexities of teacher, init
and memory, the split's near-duplicate report and the run's warnings live there, so packages that
carry them stay readable by every memreg that reads format 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memreg.train.config import TrainConfig
from memreg.train.runner import Meta


def package_card(cfg: TrainConfig, cdigest: str, metas: dict[str, Meta], *, block_size: int, k: int, skipped: int,
                 warnings: list[str], wall: float) -> dict[str, Any]:
    import memreg

    cmeta, tmeta, emeta = metas["corpus"], metas["train"], metas["eval"]
    return {
        "name": cfg.name, "version": cfg.version, "description": cfg.description,
        "memreg_version": memreg.__version__,
        "domain": {"labels": cfg.domain, "language": cfg.language, "corpus": cfg.corpus_description,
                   "license": cfg.license},
        "training": {
            "teacher_model": cfg.teacher, "init_model": cfg.init, "corpus_digest": cdigest,
            "corpus_tokens": cmeta["train_tokens"], "datastore_size": metas["datastore"]["rows"],
            "index": metas["index"]["factory"], "k": k, "knn_temperature": metas["knn"]["temperature"],
            "beta": cfg.beta, "steps": tmeta["steps"], "block_size": block_size, "learning_rate": cfg.lr,
            "seed": cfg.seed, "memreg_version": memreg.__version__, "wall_seconds": round(wall, 3),
            "extra": _extra(cfg, metas, skipped=skipped, warnings=warnings),
        },
        "metrics": {"evaluations": emeta["evaluations"], "recommended_weight": emeta["recommended_weight"]},
    }


def _extra(cfg: TrainConfig, metas: dict[str, Meta], *, skipped: int, warnings: list[str]) -> dict[str, Any]:
    cmeta, tmeta, kmeta, ameta, imeta = (metas[s] for s in ("corpus", "train", "knn", "teacher", "init"))
    return {
        "eval_tokens": cmeta["eval_tokens"], "eval_split": cmeta["split"], "documents": cmeta["documents"],
        "skipped_files": skipped, "knn_support": cfg.knn_support, "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum, "warmup_steps": tmeta["warmup_steps"], "weight_decay": cfg.weight_decay,
        "final_loss": tmeta["final"], "nprobe": kmeta.get("nprobe"), "knn_sample_recall": kmeta.get("sample_recall"),
        "key": "last_ffn_input",
        # the model card's base_model must be a Hub id: a folder can be spelled like one (org/model)
        "model_sources": {"teacher": _source(cfg.teacher), "init": _source(cfg.init)},
        "loss": "beta*KL(p_knn||p_mem)+(1-beta)*CE",
        "processes": {"datastore": metas["datastore"].get("processes", 1), "knn": kmeta.get("processes", 1),
                      "train": tmeta.get("processes", 1)},
        "knn_effective_neighbours": kmeta.get("effective_neighbours"),
        "knn_effective_tokens": kmeta.get("effective_tokens"),
        "teacher_adaptation": ({"steps": ameta["steps"], "lr": ameta["lr"], "split": "training", "loss": "CE",
                                "train_ce_before": ameta["train_ce_before"], "train_ce_after": ameta["train_ce_after"]}
                               if ameta.get("adapted") else None),
        "init_layers": ({"layers": imeta["layers"], "source_layers": imeta["source_layers"],
                         "parameters": imeta["parameters"]} if imeta.get("truncated") else None),
        "schedule": {"early_stopping": tmeta["early_stopping"], "stop_reason": tmeta["stop_reason"],
                     "best_step": tmeta["best_step"], "select_on": tmeta.get("select_on", "memory"),
                     "select_base": tmeta.get("select_base", cfg.teacher), "max_steps": tmeta["max_steps"],
                     "steps_per_epoch": tmeta["steps_per_epoch"], "eval_every": tmeta["eval_every"],
                     "patience": cfg.patience, "max_epochs": cfg.max_epochs, "val_tokens": tmeta["val_tokens"]},
        "stop_reason": tmeta["stop_reason"],
        "learning_curve": [_rounded(p) for p in tmeta["curve"]],
        "validation": {
            "documents": cmeta["eval_documents"], "tokens": cmeta["eval_tokens"],
            "perplexity": metas["eval"].get("perplexity", {}),
            **{key: cmeta[key] for key in ("eval_8gram_overlap", "clusters", "largest_cluster",
                                           "near_duplicate_documents") if key in cmeta},
        },
        "warnings": list(warnings),
    }


def _source(ref: str) -> str:
    """"local" when transformers loads `ref` from this machine (a folder or .gguf file), else "hub"."""
    return "local" if Path(ref).expanduser().exists() else "hub"


def _rounded(point: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in point.items()}
