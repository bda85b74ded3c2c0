"""The decoding options of memreg's assisted path (`memreg.decode.assisted`), read as transformers'
`generate` reads them: a `GenerationConfig` (the model's own by default) overridden by keyword
arguments; transformers' public logits processors, warpers and stopping criteria are reused.

Everything else goes through transformers' own `generate` (ComposedForCausalLM.generate): this
module only serves the drafting loop, which refuses an option it does not implement by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from memreg.compose.model import ComposedForCausalLM


@dataclass
class AssistedOutput:
    """`return_dict_in_generate=True` of assisted decoding: sequences (1, L+new), per-token scores
    (1, V) each, and `extra` = drafted / accepted / rounds."""

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def token_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def special_ids(model: ComposedForCausalLM, eos_token_id: Any = None, pad_token_id: int | None = None) -> tuple[list[int], int]:
    """(eos ids, pad id): the caller's, else the tokenizer's, else the base's config; pad falls back to eos."""
    if eos_token_id is not None:
        eos_token_id = token_ids(eos_token_id)
    tok = model.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    cfg = getattr(model.base, "generation_config", None) or getattr(model.base, "config", None)
    if eos is None and cfg is not None:
        eos = getattr(cfg, "eos_token_id", None)
    if pad is None and cfg is not None:
        pad = getattr(cfg, "pad_token_id", None)
    eos = eos_token_id if eos_token_id is not None else token_ids(eos)
    pad = pad_token_id if pad_token_id is not None else pad
    return eos, (pad if pad is not None else eos[0] if eos else 0)


@dataclass
class DecodingOptions:
    """What the drafting loop implements; `read_options` fills it from a GenerationConfig + keywords."""

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool = False
    temperature: float | None = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    eos_token_id: Any = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: Any = None
    min_new_tokens: int | None = None
    stop_strings: Any = None
    num_beams: int | None = 1
    num_return_sequences: int | None = 1
    use_cache: bool = True
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    num_assistant_tokens: int | None = 5
    num_assistant_tokens_schedule: str | None = "heuristic"
    assistant_confidence_threshold: float | None = None
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None


# GenerationConfig fields that choose nothing for this loop (metadata, flags left at their off value)
_INERT = {"transformers_version", "_from_model_config", "decoder_start_token_id", "cache_implementation",
          "_commit_hash", "return_legacy_cache", "output_attentions", "output_hidden_states",
          "is_assistant", "length_penalty", "early_stopping", "compile_config", "disable_compile"}


def read_options(model: ComposedForCausalLM, generation_config: Any, kwargs: dict[str, Any]) -> DecodingOptions:
    """The model's generation config (or the one given), its set fields overridden by `kwargs`; an
    option the drafting loop does not implement, set to anything but its off value, is refused by name."""
    config = generation_config if generation_config is not None else model.generation_config
    known = {f for f in DecodingOptions.__dataclass_fields__}
    values = {k: v for k, v in config.to_diff_dict().items() if k not in _INERT and v is not None}
    values.update({k: v for k, v in kwargs.items() if v is not None})
    for flag in ("output_attentions", "output_hidden_states"):
        if values.pop(flag, False) or getattr(config, flag, False):
            raise TypeError(f"{flag}=True with assisted decoding: drafting does not collect them; drop it or "
                            "generate without assistant_model / prompt_lookup_num_tokens")
    unsupported = sorted(k for k in values if k not in known)
    if unsupported:
        raise TypeError(f"assisted decoding (assistant_model= / prompt_lookup_num_tokens=) does not support "
                        f"{', '.join(unsupported)}: generate without drafting to use them")
    return DecodingOptions(**values)


def processors(
    logits_processor: Any, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
    *, repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
    bad_words_ids: Any = None, min_new_tokens: int | None = None, prompt_len: int = 0, eos: list[int] | None = None,
    min_p: float | None = None, typical_p: float | None = None,
):
    """transformers' public processors, in the order its generate() applies them. They act on the
    mixture's log-probabilities (the composed model's logits): shift-invariant ones (n-gram and
    bad-word bans, min_new_tokens, top-k/p) behave as on the base's raw logits; a repetition
    penalty scales log-probabilities, which are all negative, so it is not the base's number."""
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        NoBadWordsLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty)))
    if no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(int(no_repeat_ngram_size)))
    if bad_words_ids:
        procs.append(NoBadWordsLogitsProcessor(bad_words_ids, eos_token_id=eos or None))
    if min_new_tokens and eos:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, int(min_new_tokens), eos))
    procs.extend(list(logits_processor or []))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k:
            procs.append(TopKLogitsWarper(int(top_k)))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(float(top_p)))
        if typical_p is not None and typical_p < 1.0:
            from transformers import TypicalLogitsWarper

            procs.append(TypicalLogitsWarper(float(typical_p)))
        if min_p is not None:
            from transformers import MinPLogitsWarper

            procs.append(MinPLogitsWarper(float(min_p)))
    return procs


def criteria(stopping_criteria: Any, stop_strings: str | list[str] | None, tokenizer: Any):
    """transformers' StoppingCriteriaList: the caller's criteria plus StopStringCriteria."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    criteria = StoppingCriteriaList(list(stopping_criteria or []))
    if stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings needs a tokenizer: pass tokenizer=… to generate()")
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    return criteria
