"""Decoding for `ComposedLM`: greedy, sampling and beam search over left-padded batches.

Why an own loop rather than transformers' `GenerationMixin.generate`: the latter drives the model
through internals that change between releases (cache keyword names, cache classes, position
bookkeeping), and a mixture has one cache per member. This loop calls only `ComposedLM.forward`,
and reuses transformers' public pieces: `GenerationConfig`, its logits processors (repetition
penalty, n-gram and bad-word bans, min_new_tokens) and warpers (temperature, top-k, top-p), its
stopping criteria (`stop_strings`, any `stopping_criteria`) and the streamer protocol
(`TextStreamer`: `put` the prompt, then each token, then `end`). `assistant_model=` (a memory, its
name or another model) and `prompt_lookup_num_tokens=` switch to speculative decoding
(`memreg.assisted`), whose output is still the mixture's. Keyword names and defaults follow
`generate` (except `top_k`, off unless given); an option it does not implement is refused by name.

Shapes: B prompts, L prompt length (left-padded), V vocabulary, N beams. Beam search: `memreg.beam_search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from memreg.composed import ComposedLM


@dataclass
class GenerateOutput:
    """`return_dict_in_generate=True`: sequences (B*R, L+new), per-step scores (B*N, V), beam scores (B*R,)."""

    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    sequences_scores: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _token_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _special_ids(model: ComposedLM, eos_token_id: Any = None, pad_token_id: int | None = None) -> tuple[list[int], int]:
    """(eos ids, pad id): the caller's, else the tokenizer's, else the base's config; pad falls back to eos."""
    if eos_token_id is not None:
        eos_token_id = _token_ids(eos_token_id)
    tok = model.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    cfg = getattr(model.base, "generation_config", None) or getattr(model.base, "config", None)
    if eos is None and cfg is not None:
        eos = getattr(cfg, "eos_token_id", None)
    if pad is None and cfg is not None:
        pad = getattr(cfg, "pad_token_id", None)
    eos = eos_token_id if eos_token_id is not None else _token_ids(eos)
    pad = pad_token_id if pad_token_id is not None else pad
    return eos, (pad if pad is not None else eos[0] if eos else 0)


def _processors(
    logits_processor: Any, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
    *, repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
    bad_words_ids: Any = None, min_new_tokens: int | None = None, prompt_len: int = 0, eos: list[int] | None = None,
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
    return procs


# GenerationConfig fields that carry no decoding choice (metadata, or ids handled by _special_ids)
_CONFIG_METADATA = {"transformers_version", "_from_model_config", "bos_token_id", "decoder_start_token_id",
                    "cache_implementation", "_commit_hash", "return_legacy_cache"}


def generate(
    model: ComposedLM,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    generation_config: Any = None,
    **kwargs: Any,
) -> torch.Tensor | GenerateOutput:
    """Continue left-padded prompts `input_ids` (B, L); returns (B * num_return_sequences, L + new).

    `generation_config` (a transformers GenerationConfig) gives the options it sets away from
    their defaults; keyword arguments override it, as in transformers. An option this loop does
    not implement is refused by name, never ignored."""
    if kwargs.get("token_type_ids") is not None:  # GPT-2 adds them to its embeddings: never drop them silently
        raise TypeError("generate() got token_type_ids, which memreg's decoding does not feed to the members: "
                        "tokenize with return_token_type_ids=False")
    kwargs.pop("token_type_ids", None)
    if generation_config is not None:
        import inspect

        known = set(inspect.signature(_generate).parameters)
        from_config = {k: v for k, v in generation_config.to_diff_dict().items() if k not in _CONFIG_METADATA}
        unsupported = sorted(k for k in from_config if k not in known)
        if unsupported:
            raise TypeError(f"generation_config sets options memreg's decoding does not support: {', '.join(unsupported)}")
        kwargs = {**from_config, **kwargs}
    return _generate(model, input_ids, attention_mask, **kwargs)


# The keyword list mirrors transformers' generate(), hence the long signature; the body stays short.
@torch.no_grad()
def _generate(
    model: ComposedLM,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    max_length: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Any = None,
    logits_processor: Any = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    output_scores: bool = False,
    return_dict_in_generate: bool = False,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    bad_words_ids: list[list[int]] | None = None,
    min_new_tokens: int | None = None,
    stop_strings: str | list[str] | None = None,
    stopping_criteria: Any = None,
    tokenizer: Any = None,
    assistant_model: Any = None,
    num_assistant_tokens: int = 5,
    num_assistant_tokens_schedule: str = "heuristic",
    prompt_lookup_num_tokens: int | None = None,
    max_matching_ngram_size: int | None = None,
    **unknown: Any,
) -> torch.Tensor | GenerateOutput:
    _check_options(unknown, input_ids, temperature, top_p, num_beams, num_return_sequences)
    if max_length is not None:
        max_new_tokens = max_length - input_ids.shape[1]
    input_ids = input_ids.to(model.device)
    mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).to(model.device).long()
    eos, pad = _special_ids(model, eos_token_id, pad_token_id)
    procs = _processors(logits_processor, do_sample, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                        no_repeat_ngram_size=no_repeat_ngram_size, bad_words_ids=bad_words_ids,
                        min_new_tokens=min_new_tokens, prompt_len=input_ids.shape[1], eos=eos)
    criteria = _criteria(stopping_criteria, stop_strings, tokenizer or model.tokenizer)
    if assistant_model is not None or prompt_lookup_num_tokens:
        if num_beams > 1 or num_return_sequences > 1:
            raise ValueError("assisted decoding gives one sequence per prompt: use num_beams=1, num_return_sequences=1")
        if assistant_model is not None and prompt_lookup_num_tokens:
            raise ValueError("give assistant_model or prompt_lookup_num_tokens, not both: one source of drafts")
        drafts = dict(assistant=assistant_model, num_assistant_tokens=prompt_lookup_num_tokens or num_assistant_tokens,
                      schedule=num_assistant_tokens_schedule,
                      lookup_ngram=(max_matching_ngram_size or 2) if prompt_lookup_num_tokens else None)
        return _assisted(model, input_ids, mask, max_new_tokens, do_sample, eos, procs, criteria, streamer, generator,
                         output_scores, return_dict_in_generate, drafts)
    if num_beams > 1:
        _check_beam_options(criteria, do_sample, streamer, num_return_sequences, num_beams)
        from memreg.beam_search import beam_search

        return beam_search(
            model, input_ids, mask, max_new_tokens, num_beams, num_return_sequences, length_penalty,
            eos, pad, procs, use_cache, output_scores, return_dict_in_generate,
        )
    if num_return_sequences > 1:
        if not do_sample:
            raise ValueError("greedy decoding gives one sequence per prompt: use do_sample=True or num_beams")
        input_ids = input_ids.repeat_interleave(num_return_sequences, 0)
        mask = mask.repeat_interleave(num_return_sequences, 0)
    return _sample(
        model, input_ids, mask, max_new_tokens, do_sample, eos, pad, procs, streamer, generator,
        use_cache, output_scores, return_dict_in_generate, criteria,
    )


def _check_options(unknown: dict, input_ids: torch.Tensor | None, temperature: float | None, top_p: float | None,
                   num_beams: int, num_return_sequences: int) -> None:
    if unknown:
        raise TypeError(f"generate() got unsupported arguments: {', '.join(sorted(unknown))}")
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("generate() needs input_ids of shape (batch, length) with at least one token")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature {temperature} must be > 0 (for greedy decoding use do_sample=False)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p {top_p} must be in (0, 1]")
    if num_beams < 1 or num_return_sequences < 1:
        raise ValueError("num_beams and num_return_sequences must be at least 1")


def _check_beam_options(criteria: Any, do_sample: bool, streamer: Any, num_return_sequences: int, num_beams: int) -> None:
    if criteria:
        raise ValueError("stop_strings and stopping_criteria need num_beams=1 in memreg's decoding")
    if do_sample:
        raise ValueError("beam search with sampling is not supported: use num_beams=1 with do_sample=True")
    if streamer is not None:
        raise ValueError("a streamer needs num_beams=1: beams are only decided at the end")
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences {num_return_sequences} cannot exceed num_beams {num_beams}")


def _assisted(model, ids, mask, max_new, do_sample, eos, procs, criteria, streamer, generator, output_scores, as_dict,
              drafts: dict):
    """Speculative decoding (memreg.assisted); `extra` reports drafted/accepted counts."""
    from memreg.assisted import assisted_decode

    out, scores, stats = assisted_decode(
        model, ids, mask, max_new, do_sample=do_sample, eos=eos, procs=procs, criteria=criteria,
        streamer=streamer, generator=generator, **drafts)
    if as_dict:
        extra = {"drafted": stats.drafted, "accepted": stats.accepted, "rounds": stats.rounds}
        return GenerateOutput(out, tuple(scores) if output_scores else None, extra=extra)
    return out


def _criteria(stopping_criteria: Any, stop_strings: str | list[str] | None, tokenizer: Any):
    """transformers' StoppingCriteriaList: the caller's criteria plus StopStringCriteria."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    criteria = StoppingCriteriaList(list(stopping_criteria or []))
    if stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings needs a tokenizer: pass tokenizer=… to generate()")
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    return criteria


class _Stepper:
    """Feeds the growing sequences to the model, with or without the members' caches."""

    def __init__(self, model: ComposedLM, use_cache: bool) -> None:
        self.model, self.use_cache, self.cache = model, use_cache, None

    def first(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(ids, mask, use_cache=self.use_cache)
        self.cache = out.cache
        return out.logits[:, -1]  # (B, V)

    def next(self, ids: torch.Tensor, mask: torch.Tensor, reorder: torch.Tensor | None = None) -> torch.Tensor:
        if not self.use_cache:
            return self.model(ids, mask).logits[:, -1]
        if reorder is not None:
            self.cache.reorder(reorder)
        out = self.model(ids[:, -1:], mask, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]


def _sample(model, ids, mask, max_new, do_sample, eos, pad, procs, streamer, generator, use_cache, output_scores, as_dict,
            criteria=None):
    stepper = _Stepper(model, use_cache)
    eos_t = torch.tensor(eos, device=ids.device, dtype=torch.long)
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    scores: list[torch.Tensor] = []
    if streamer is not None:
        streamer.put(ids.cpu())
    logp = stepper.first(ids, mask) if max_new > 0 else None
    for step in range(max_new):
        step_scores = procs(ids, logp)  # (B, V)
        if output_scores:
            scores.append(step_scores)
        if do_sample:
            probs = torch.softmax(step_scores.double(), dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            tok = step_scores.argmax(dim=-1)
        tok = torch.where(unfinished, tok, torch.full_like(tok, pad))
        ids = torch.cat([ids, tok[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if streamer is not None:
            streamer.put(tok.cpu())
        if eos:
            unfinished &= ~torch.isin(tok, eos_t)
        if criteria:
            unfinished &= ~criteria(ids, step_scores).to(unfinished.device)
        if step == max_new - 1 or not unfinished.any():
            break
        logp = stepper.next(ids, mask)
    if streamer is not None:
        streamer.end()
    if as_dict:
        return GenerateOutput(ids, tuple(scores) if output_scores else None)
    return ids
