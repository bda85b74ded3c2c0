"""`memreg train`: build a memory decoder from a corpus (thin: parse, call memreg.train, show progress)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, Optional

import typer

from memreg.cli import output
from memreg.cli.options import JsonOpt, QuietOpt
from memreg.cli.output import clean, console, print_json, styled
from memreg.train.defaults import DEFAULT_LR, DEFAULT_MAX_EPOCHS, DEFAULT_SELECT_ON

if TYPE_CHECKING:
    from memreg.train import TrainConfig, TrainResult

CorpusArg = Annotated[list[str], typer.Argument(help="text files, folders, globs, JSONL with a 'text' field, or a save_to_disk dataset", show_default=False)]
ModelOpt = Annotated[str, typer.Option(help="Hugging Face id, local folder or .gguf file (no remote code)", show_default=False)]


def train(
    corpus: CorpusArg,
    teacher: ModelOpt = ...,  # type: ignore[assignment]
    init: ModelOpt = ...,  # type: ignore[assignment]
    init_layers: Annotated[Optional[int], typer.Option(help="start the memory from the first N blocks of --init (embeddings, final norm and LM head kept): for a base with no smaller sibling", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="package folder to write; an existing one must be empty, or this run's own package (same --teacher and --init: a run repeated or resumed)")] = ...,  # type: ignore[assignment]
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out that is not this run's own package")] = False,
    domain: Annotated[Optional[list[str]], typer.Option(help="domain label (repeat for several)")] = None,
    k: Annotated[Optional[int], typer.Option(help="neighbours per position [default: the paper's 1024, lowered to fit the datastore]", show_default=False)] = None,
    temperature: Annotated[str, typer.Option(help="kNN softmax temperature over squared L2 distances, or 'auto'")] = "auto",
    beta: Annotated[float, typer.Option(help="loss = beta*KL(p_knn||p_mem) + (1-beta)*CE")] = 0.5,
    block_size: Annotated[Optional[int], typer.Option(help="tokens per training block [default: min(512, model context)]", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option(help="fixed number of optimizer steps (overrides --epochs) [default: stop on the validation loss]", show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="fixed number of passes over the corpus [default: stop on the validation loss]", show_default=False)] = None,
    max_epochs: Annotated[float, typer.Option(help="cap of a run stopped on the validation loss (the learning rate decays to 0 there)")] = DEFAULT_MAX_EPOCHS,
    patience: Annotated[int, typer.Option(help="stop after this many evaluations without improvement")] = 3,
    eval_every: Annotated[Optional[int], typer.Option(help="optimizer steps between evaluations [default: twice an epoch]", show_default=False)] = None,
    val_tokens: Annotated[int, typer.Option(help="held-out tokens scored at each evaluation")] = 16_384,
    max_minutes: Annotated[Optional[float], typer.Option(help="stop training after this many minutes and package the best checkpoint so far", show_default=False)] = None,
    select_on: Annotated[Literal["mixture", "memory"], typer.Option(help="what early stopping and the packaged checkpoint follow on the held-out documents: the memory alone (memory), or base + memory at its best weight (mixture)")] = DEFAULT_SELECT_ON,
    select_base: Annotated[Optional[str], typer.Option(help="the base of --select-on mixture: Hugging Face id, folder or .gguf file of the memory's tokenizer [default: the teacher]", show_default=False)] = None,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate (after a linear warm-up)")] = DEFAULT_LR,
    batch_size: Annotated[int, typer.Option(help="blocks per micro-batch")] = 8,
    grad_accum: Annotated[int, typer.Option(help="micro-batches per optimizer step")] = 1,
    adapt_teacher_steps: Annotated[int, typer.Option(help="first fine-tune a copy of the teacher with CE on the training split for N steps (the paper's domain-adapted teacher); 0 = off")] = 0,
    adapt_teacher_lr: Annotated[float, typer.Option(help="peak AdamW learning rate of --adapt-teacher-steps")] = 3e-4,
    eval_fraction: Annotated[float, typer.Option(help="share of the corpus held out for validation and evaluation (whole near-duplicate clusters of documents)")] = 0.05,
    eval_corpus: Annotated[Optional[list[str]], typer.Option(help="your own held-out documents (files, folders, globs, JSONL; repeat for several) instead of --eval-fraction; checked for near-copies of the corpus", show_default=False)] = None,
    index: Annotated[str, typer.Option(help="'auto' or a faiss factory string: Flat, IVF1024,Flat, IVF4096,PQ64")] = "auto",
    search: Annotated[str, typer.Option(help="kNN search: faiss (the --index), torch (exact, blocks of keys on --device; no faiss needed) or auto (torch on cuda, else faiss)")] = "auto",
    nprobe: Annotated[Optional[int], typer.Option(help="IVF lists searched [default: the smallest power of two whose recall@k on a sample reaches --recall-goal]", show_default=False)] = None,
    recall_goal: Annotated[float, typer.Option(help="IVF: share of the exact k neighbours the default nprobe must find")] = 0.9,
    index_on_disk: Annotated[Optional[bool], typer.Option("--index-on-disk/--index-in-memory", help="IVF: keep the inverted lists in a file beside the index (faiss on-disk lists, memory-mapped when searched) [default: on disk only when they would not fit the 4 GiB memory budget]", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="seed of the split, the sampling and the training")] = 0,
    work_dir: Annotated[Optional[Path], typer.Option(help="stage cache [default: <out>.work]", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    name: Annotated[Optional[str], typer.Option(help="package name for memreg.json")] = None,
    version: Annotated[Optional[str], typer.Option(help="package version for memreg.json")] = None,
    description: Annotated[Optional[str], typer.Option(help="one-line description for memreg.json")] = None,
    language: Annotated[Optional[str], typer.Option(help="BCP-47 language of the corpus, e.g. en")] = None,
    license: Annotated[Optional[str], typer.Option(help="licence of the corpus / memory (SPDX id)")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a memory decoder on CORPUS and write a package folder that `memreg publish` takes.

    By default training stops when the memory's loss stops improving on the held-out documents (evaluated twice an epoch; --patience, --max-epochs, --max-minutes; --select-on mixture judges base + memory at its best weight instead, the base being the teacher or --select-base) and the best checkpoint is packaged; the card (memreg.json) holds the learning curve of both. Example, a memory for SmolLM2 from its own first 4 blocks: memreg train docs/ --teacher model.gguf --init model.gguf --init-layers 4 --out law-memory

    Several processes (one machine or many): launch the same command with accelerate. On 2 CPU processes (accelerate's --cpu launcher starts one process without MPI, so use its torchrun launcher): accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no -m memreg train CORPUS --teacher BIG --init SMALL --out DIR. On GPUs: accelerate launch --num_processes N -m memreg train ... --device cuda (torchrun --nproc_per_node N -m memreg train ... works too).

    The datastore is split across the processes; the teacher adaptation and the training are data parallel (gradients averaged, N times the blocks per step, so N times fewer steps per epoch); each process computes the kNN targets of its own share of the rows; process 0 alone tokenizes, builds the index, evaluates and writes the package.
    """
    options = dict(locals())  # the parameters alone: every option but --json/--quiet is a TrainConfig field
    output.start("train", json_mode=json_)  # errors as JSON only under this call's --json
    _check_out(Path(options["out"]).expanduser(), options)
    result = _train(options, bars=not (quiet or json_))
    if json_:
        print_json(result.to_json())
        return
    _summary(result)


def _train(options: dict[str, Any], *, bars: bool) -> TrainResult:
    """memreg.train on the command's options; a bad setting or a refused run is one line and exit 1."""
    from pydantic import ValidationError

    from memreg.cli.progress import model_loading_bars
    from memreg.core.errors import MemregError
    from memreg.train import train as run_train

    model_loading_bars(downloads=bars)  # a teacher or init from the Hub shows its download
    try:
        config = _config(options)
        with _RichProgress(enabled=bars) as progress:
            return run_train(config, progress=progress)
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}")
    except MemregError as exc:
        _fail(str(exc))


def _config(options: dict[str, Any]) -> TrainConfig:
    from memreg.train import TrainConfig

    settings = {name: value for name, value in options.items() if name not in ("json_", "quiet", "overwrite")}
    temperature = settings["temperature"]
    return TrainConfig(**{**settings, "domain": settings["domain"] or [],
                          "temperature": temperature if temperature == "auto" else _float("--temperature", temperature)})


def _check_out(out: Path, options: dict[str, Any]) -> None:
    """A non-empty --out is replaced only with --overwrite, or when it is this run's own package: a
    usage error (exit 2) before any model loads, as convert-gguf refuses. The package is written at
    the very end, so an interrupted run has no --out yet and resumes from its work folder."""
    if options["overwrite"] or not out.exists() or out.is_dir() and not any(out.iterdir()):
        return
    what = _foreign(out, options)
    if what is None:
        return
    from memreg.gguf import OutputExistsError

    exc = OutputExistsError(f"--out {out} already exists and is not empty ({what}): pass --overwrite to replace it, "
                            "or choose another --out")
    _fail(str(exc), code=2, kind=type(exc).__name__)


def _foreign(out: Path, options: dict[str, Any]) -> str | None:
    """Why `out` is not a package memreg train wrote from this --teacher and --init (None: it is)."""
    from pydantic import ValidationError

    from memreg.registry.package import CARD
    from memreg.schemas import PackageCard

    try:
        training = PackageCard.model_validate_json((out / CARD).read_text()).training
    except (OSError, ValueError, ValidationError):
        return "a file" if out.is_file() else f"no {CARD} of a trained memory in it"
    if training is None:
        return "a package memreg train did not write"
    if not (_same_model(training.teacher_model, options["teacher"]) and _same_model(training.init_model, options["init"])):
        return f"a memory trained from teacher {training.teacher_model} and init {training.init_model}"
    return None


def _same_model(a: str, b: str) -> bool:
    """One Hub id, or one path however it was spelled (relative, ~, absolute)."""
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _float(option: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        _fail(f"{option} {value!r} is not a number: give a positive number or 'auto'")


def _fail(message: str, *, code: int = 1, kind: str = "TrainError") -> NoReturn:
    if os.environ.get("MEMREG_DEBUG") == "1" and sys.exc_info()[0] is not None:
        raise
    if output.json_mode():
        output.print_json_error(kind, message, code)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _summary(result: TrainResult) -> None:
    from rich.table import Table

    extra = result.card.training.extra if result.card.training else {}
    sched = extra.get("schedule") or {}
    console.print("memory decoder written to", styled(str(result.out), "bold"), f"(k={result.k}, T={result.temperature:g}, "
                  f"{result.steps} steps, index {result.index}, {result.datastore_size} datastore entries)")
    if sched.get("best_step") is not None and extra.get("learning_curve"):
        judged = (f"base + memory with {sched['select_base']}" if sched.get("select_on") == "mixture"
                  else "the memory alone")
        console.print(f"stopped: {sched['stop_reason']}; packaged the best checkpoint on {judged} "
                      f"(step {sched['best_step']})", highlight=False)
    ppl = (extra.get("validation") or {}).get("perplexity") or {}
    if "memory" in ppl:
        adapted = f", adapted teacher {ppl['adapted_teacher']:.2f}" if "adapted_teacher" in ppl else ""
        console.print(f"held-out perplexity alone: memory {ppl['memory']:.2f}, its untrained init {ppl['init']:.2f}, "
                      f"teacher {ppl['teacher']:.2f}{adapted}")
    for warning in result.warnings:
        console.print(styled("warning:", "bold yellow"), warning)  # text, never markup (cli/output.py)
    if result.card.metrics.evaluations:
        table = Table(title="held-out perplexity")
        for col in ("base", "alone", "+ memory", "weight"):
            table.add_column(col)
        for e in result.card.metrics.evaluations:
            table.add_row(e.base, f"{e.perplexity_base:.2f}", f"{e.perplexity_with_memory:.2f}", f"{e.weight:g}")
        console.print(table)


class _RichProgress:
    """TrainProgress drawn with rich: one bar per stage, notes printed as warnings on stderr."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "_RichProgress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), transient=False,
                                 redirect_stderr=False)  # a Hub download's bar (stderr) draws as it goes, not once done
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def stage(self, name: str, *, total: int | None, unit: str, cached: bool = False) -> None:
        if self._bar is not None:
            label = f"{name} (cached)" if cached else name
            self._task = self._bar.add_task(label, total=total, unit=unit, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._bar is not None and self._task is not None:
            text = " ".join(f"{k}={v:.3g}" for k, v in info.items() if isinstance(v, float))
            self._bar.update(self._task, advance=n, **({"info": text} if text else {}))

    def note(self, message: str, *, warning: bool = False) -> None:
        text = f"warning: {message}" if warning else f"note: {message}"
        if self._bar is not None:
            self._bar.console.print(styled(text, "bold yellow") if warning else clean(text), markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)

    def end_stage(self) -> None:
        self._task = None
