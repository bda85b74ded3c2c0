"""Assisted (speculative) decoding for a composition: a small model drafts, the mixture decides.

The memory is the natural drafter: it is smaller than the base and already a member, so its
log-probabilities at the drafted positions are computed once, while drafting, and reused in the
mixture. Verifying K drafts then costs one forward of the other members over K+1 tokens instead
of K+1 one-token forwards. Any other causal LM with the same tokenizer can draft too
(`assistant_model=`); it is then run in addition to every member. Drafts can also cost nothing:
prompt lookup (`prompt_lookup_num_tokens=`) proposes what followed the current n-gram earlier in
the text, which pays off on repetitive domain text (licences, changelogs, code); every member
then verifies.

Every emitted token comes from the mixture, never from the drafter alone:
- greedy: a draft is kept while it is the mixture's argmax at its position; the first one that is
  not is replaced by the mixture's argmax, so the tokens are those of plain greedy decoding (up to
  floating point: a (K+1)-token forward and K+1 one-token forwards can round differently, which
  could flip an exact near-tie; the tests use float64 models);
- sampling: the rule of Leviathan et al. (2023) and Chen et al. (2023): keep draft x ~ q with
  probability min(1, p(x) / q(x)), otherwise draw from max(0, p - q) renormalised, and draw from p
  after K kept drafts; every emitted token is distributed exactly as p (tested analytically).

One prompt at a time, as transformers' assisted generation: the rows of a batch would keep
different numbers of drafts. The draft length follows transformers' "heuristic" schedule
(+2 after a fully kept draft, -1 otherwise, at least 1) unless the schedule is "constant".

Shapes: L tokens so far, K drafts, V vocabulary; batch size 1 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from memreg.compose.members import embedding_rows, forward_keys, member_step, widest
from memreg.decode.options import AssistedOutput, read_options
from memreg.mixture import mix_log_probs

if TYPE_CHECKING:
    from memreg.compose.model import ComposedForCausalLM


@dataclass
class DraftStats:
    """How many tokens were drafted and how many of them the mixture kept."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0


def crop_cache(cache: Any, remove: int) -> Any:
    """Drop the last `remove` positions of one member's KV cache.

    `Cache.crop` took the length to keep in transformers 4.x and the number of tokens to remove in
    5.x, but both read a negative argument as "remove that many": the one form that works in both."""
    if remove <= 0 or cache is None:
        return cache
    if hasattr(cache, "crop"):
        cache.crop(-remove)
        return cache
    # legacy tuple-of-tuples caches: ((k, v), ...) with the sequence on dim -2
    return tuple(tuple(t[..., : t.shape[-2] - remove, :] for t in layer) for layer in cache)


def pick_greedy(p_scores: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """p_scores (K+1, V): the mixture's processed scores after each prefix. Returns (kept drafts, next token)."""
    best = p_scores.argmax(dim=-1).tolist()
    for i, d in enumerate(drafts):
        if best[i] != d:
            return i, best[i]
    return len(drafts), best[len(drafts)]


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(0, p - q) renormalised: where to draw from after a rejected draft (p, q: (V,) probabilities)."""
    r = (p - q).clamp(min=0)
    total = r.sum()
    return r / total if total > 0 else p  # p == q: no draft is ever rejected, kept for safety


def pick_sampled(p_scores: torch.Tensor, q_scores: torch.Tensor, drafts: list[int],
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """p_scores (K+1, V) of the mixture, q_scores (K, V) the drafter's; drafts were drawn from q."""
    p = torch.softmax(p_scores.double(), dim=-1)
    q = torch.softmax(q_scores.double(), dim=-1)
    for i, d in enumerate(drafts):
        u = torch.rand((), dtype=torch.float64, generator=generator, device=p.device)
        if u * q[i, d] <= p[i, d]:  # u < min(1, p/q) without dividing by a tiny q
            continue
        return i, int(torch.multinomial(residual(p[i], q[i]), 1, generator=generator))
    k = len(drafts)
    return k, int(torch.multinomial(p[k], 1, generator=generator))


class _Drafter:
    """Where drafts come from: a member of the composition (its index), an outside model, or the
    text so far (prompt lookup: the tokens that followed the last earlier occurrence of the
    current n-gram; free to propose, so every member verifies)."""

    def __init__(self, model: ComposedForCausalLM, assistant: Any, lookup_ngram: int | None = None) -> None:
        self.member: int | None = None
        self.outside: torch.nn.Module | None = None
        self.lookup_ngram = lookup_ngram
        self.cache: Any = None
        if lookup_ngram is not None:
            return
        if isinstance(assistant, str):
            if assistant not in model.names:
                raise ValueError(f"assistant_model {assistant!r} is not one of the memories {model.names}")
            self.member = model.member_of_memory[model.names.index(assistant)]
        else:
            for j, m in enumerate(model.members):
                if m is assistant:
                    self.member = j
        if self.member == 0:
            raise ValueError("the base cannot draft for itself: pass a memory or a smaller model as assistant_model")
        # an outside drafter: read as a member is (same slicing to the vocabulary, same log-softmax)
        if self.member is None:
            if embedding_rows(assistant) < model.vocab_size:
                raise ValueError(f"assistant_model has {embedding_rows(assistant)} embedding rows, fewer than the "
                                 f"composition's vocabulary of {model.vocab_size}: it needs the same tokenizer")
            self.outside, self.keys = assistant, forward_keys(assistant)


def lookup_drafts(ids: list[int], k: int, max_ngram: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the last n ids (n from
    max_ngram down to 1), as transformers' prompt lookup decoding proposes them."""
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == tail:
                return ids[start + n : start + n + k]
    return []


class AssistedDecoder:
    """State of one assisted generation: the ids so far, one cache per member, the drafter's cache."""

    def __init__(self, model: ComposedForCausalLM, ids: torch.Tensor, mask: torch.Tensor, assistant: Any, procs: Any,
                 do_sample: bool, generator: torch.Generator | None, lookup_ngram: int | None = None,
                 mixing: Any = None) -> None:
        if ids.shape[0] != 1:
            raise ValueError(f"assisted decoding takes one prompt at a time, got a batch of {ids.shape[0]}")
        self.model, self.procs, self.do_sample, self.generator = model, procs, do_sample, generator
        self.drafter = _Drafter(model, assistant, lookup_ngram)
        self.ids, self.mask = ids, mask  # (1, L): the last id is not in any cache yet
        self.caches: list[Any] = [None] * len(model.members)
        self.mixing = mixing if mixing is not None else model.member_weights  # or a (1, members - 1) row
        self.stats = DraftStats()
        if ids.shape[1] > 1:
            self._prefill()

    def _forward(self, j: int | None, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (1, T) after the cached ones to member j (None: the outside drafter); (1, T, V)."""
        t = tokens.shape[1]
        mask = self.mask[:, : self._cached(j) + t]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
        if j is None:
            step = member_step(self.drafter.outside, self.drafter.keys, self.model.vocab_size, tokens, attention_mask=mask,
                               position_ids=pos, cache=self.drafter.cache, use_cache=True)
            self.drafter.cache = step.cache
        else:
            step = member_step(self.model.members[j], self.model.member_keys[j], self.model.vocab_size, tokens,
                               attention_mask=mask, position_ids=pos, cache=self.caches[j], use_cache=True)
            self.caches[j] = step.cache
        return step.log_probs

    def _cached(self, j: int | None) -> int:
        cache = self.drafter.cache if j is None else self.caches[j]
        return 0 if cache is None else _seq_length(cache)

    def _prefill(self) -> None:
        prompt = self.ids[:, :-1]
        for j in self._verifiers() + ([] if self.drafter.lookup_ngram else [self.drafter.member]):
            self._forward(j, prompt)

    def _verifiers(self) -> list[int]:
        """Members run over the drafts in one forward: all but a drafting member."""
        return [j for j in range(len(self.model.members)) if j != self.drafter.member]

    def draft(self, k: int) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """Propose k tokens: (drafts, the drafter's processed scores (k, V), a drafting member's
        log-probabilities after the pending token and each draft (k+1, V), else None)."""
        if self.drafter.lookup_ngram:
            return self._lookup(k)
        self.mask = torch.cat([self.mask, self.mask.new_ones(1, k + 1)], dim=1)  # up to the token after the drafts
        lps = [self._forward(self.drafter.member, self.ids[:, -1:])[0, -1]]
        ids, drafts, q_scores = self.ids, [], []
        for i in range(k):
            q = self.procs(ids, lps[-1][None].clone())[0]  # processors may edit scores in place
            tok = int(torch.multinomial(torch.softmax(q.double(), -1), 1, generator=self.generator)) if self.do_sample \
                else int(q.argmax())
            drafts.append(tok)
            q_scores.append(q)
            ids = torch.cat([ids, ids.new_tensor([[tok]])], dim=1)
            lps.append(self._forward(self.drafter.member, ids[:, -1:])[0, -1])
        q_stack = torch.stack(q_scores) if q_scores else lps[0].new_zeros(0, lps[0].shape[-1])
        return drafts, q_stack, (torch.stack(lps) if self.drafter.member is not None else None)

    def _lookup(self, k: int) -> tuple[list[int], torch.Tensor, None]:
        """Drafts from the text so far; the drafter's distribution is a point mass on each draft."""
        drafts = lookup_drafts(self.ids[0].tolist(), k, self.drafter.lookup_ngram) if k else []
        self.mask = torch.cat([self.mask, self.mask.new_ones(1, len(drafts) + 1)], dim=1)
        q = torch.full((len(drafts), self.model.vocab_size), -torch.inf, dtype=torch.float64)
        q[torch.arange(len(drafts)), drafts] = 0.0
        return drafts, q, None

    def verify(self, drafts: list[int], member_lps: torch.Tensor | None) -> torch.Tensor:
        """The mixture's processed scores (K+1, V) after the pending token and after each draft."""
        tokens = torch.cat([self.ids[:, -1:], self.ids.new_tensor([drafts])], dim=1)  # (1, K+1)
        lps: list[torch.Tensor | None] = [None] * len(self.model.members)
        for j in self._verifiers():
            lps[j] = self._forward(j, tokens)[0]
        if member_lps is not None:
            lps[self.drafter.member] = member_lps
        # float32 scores, as transformers' generate casts them: assisted and plain decoding compare the same numbers
        logp = mix_log_probs(widest(lps), self.mixing).float()  # (K+1, V)
        ids = torch.cat([self.ids, self.ids.new_tensor([drafts])], dim=1)
        start = self.ids.shape[1]
        return torch.cat([self.procs(ids[:, : start + i], logp[i : i + 1].clone()) for i in range(len(drafts) + 1)])

    def step(self, k: int) -> tuple[list[int], torch.Tensor]:
        """One round: draft k, verify, keep n; returns the n+1 new tokens and their scores (n+1, V)."""
        drafts, q_scores, member_lps = self.draft(k)
        k = len(drafts)  # prompt lookup may find fewer
        p_scores = self.verify(drafts, member_lps)
        if self.do_sample:
            n, tok = pick_sampled(p_scores, q_scores, drafts, self.generator)
        else:
            n, tok = pick_greedy(p_scores, drafts)
        new = drafts[:n] + [tok]
        # caches hold the pending token and all k drafts; keep the pending token and the n kept ones
        for j in range(len(self.caches)):
            self.caches[j] = crop_cache(self.caches[j], k - n)
        self.drafter.cache = crop_cache(self.drafter.cache, k - n)
        self.ids = torch.cat([self.ids, self.ids.new_tensor([new])], dim=1)
        self.mask = self.mask[:, : self.ids.shape[1]]
        self.stats.drafted, self.stats.accepted, self.stats.rounds = (
            self.stats.drafted + k, self.stats.accepted + n, self.stats.rounds + 1)
        return new, p_scores[: n + 1]


def _seq_length(cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])


def assisted_decode(model: ComposedForCausalLM, ids: torch.Tensor, mask: torch.Tensor, max_new: int, *, assistant: Any,
                    do_sample: bool, eos: list[int], procs: Any, criteria: Any, streamer: Any,
                    generator: torch.Generator | None, num_assistant_tokens: int = 5,
                    schedule: str = "heuristic", lookup_ngram: int | None = None, mixing: Any = None,
                    ) -> tuple[torch.Tensor, list[torch.Tensor], DraftStats]:
    """Continue one prompt (1, L) by up to max_new tokens; returns (ids, per-token scores, stats).

    `assistant` drafts (a memory, its name, or an outside model), or with `lookup_ngram` the text
    so far does (prompt lookup, always a constant draft length, as in transformers)."""
    if lookup_ngram is not None:
        if lookup_ngram < 1:
            raise ValueError(f"max_matching_ngram_size {lookup_ngram} must be at least 1")
        schedule = "constant"
    if schedule not in ("heuristic", "constant"):
        raise ValueError(f"num_assistant_tokens_schedule {schedule!r}: use 'heuristic' or 'constant'")
    if num_assistant_tokens < 1:
        raise ValueError(f"num_assistant_tokens {num_assistant_tokens} must be at least 1")
    dec = AssistedDecoder(model, ids, mask.long(), assistant, procs, do_sample, generator, lookup_ngram, mixing)
    if streamer is not None:
        streamer.put(ids.cpu())
    out, scores, k, done = ids, [], num_assistant_tokens, max_new <= 0
    while not done:
        k_now = min(k, max_new - (out.shape[1] - ids.shape[1]) - 1)
        new, step_scores = dec.step(k_now)
        for tok, s in zip(new, step_scores):
            out = torch.cat([out, out.new_tensor([[tok]])], dim=1)
            scores.append(s[None])
            if streamer is not None:
                streamer.put(out.new_tensor([tok]).cpu())
            done = (tok in eos or bool(criteria and criteria(out, s[None]).any())
                    or out.shape[1] - ids.shape[1] >= max_new)
            if done:
                break
        if schedule == "heuristic":
            k = k + 2 if len(new) - 1 == k_now == k else max(1, k - 1)
    if streamer is not None:
        streamer.end()
    return out, scores, dec.stats


@torch.no_grad()
def generate_assisted(model: ComposedForCausalLM, inputs: torch.Tensor | None = None, *, generation_config: Any = None,
                      generator: torch.Generator | None = None, input_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, weights: Any = None, assistant_model: Any = None,
                      streamer: Any = None, logits_processor: Any = None, stopping_criteria: Any = None,
                      tokenizer: Any = None, **kwargs: Any) -> torch.Tensor | AssistedOutput:
    """`model.generate(..., assistant_model=...)` or `prompt_lookup_num_tokens=`: one prompt (1, L)."""
    from memreg.decode.options import criteria, processors, special_ids

    ids = inputs if inputs is not None else input_ids
    if ids is None or ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError("generate() needs input_ids of shape (batch, length) with at least one token")
    o = read_options(model, generation_config, kwargs)
    if o.num_beams not in (None, 1) or o.num_return_sequences not in (None, 1):
        raise ValueError("assisted decoding gives one sequence per prompt: use num_beams=1, num_return_sequences=1")
    if assistant_model is not None and o.prompt_lookup_num_tokens:
        raise ValueError("give assistant_model or prompt_lookup_num_tokens, not both: one source of drafts")
    if o.temperature is not None and o.temperature <= 0:
        raise ValueError(f"temperature {o.temperature} must be > 0 (for greedy decoding use do_sample=False)")
    max_new = o.max_new_tokens if o.max_new_tokens is not None else (o.max_length or 20) - ids.shape[1]
    ids = ids.to(model.device)
    mask = (attention_mask if attention_mask is not None else torch.ones_like(ids)).to(model.device).long()
    model.check_length(ids.shape[1] + max_new)
    eos, _ = special_ids(model, o.eos_token_id, o.pad_token_id)
    procs = processors(logits_processor, o.do_sample, o.temperature, o.top_k, o.top_p,
                       repetition_penalty=o.repetition_penalty, no_repeat_ngram_size=o.no_repeat_ngram_size,
                       bad_words_ids=o.bad_words_ids, min_new_tokens=o.min_new_tokens, prompt_len=ids.shape[1],
                       eos=eos, min_p=o.min_p, typical_p=o.typical_p)
    stop = criteria(stopping_criteria, o.stop_strings, tokenizer or model.tokenizer)
    mixing = model.row_member_weights(weights, ids.shape[0]) if weights is not None else None
    out, scores, stats = assisted_decode(
        model, ids, mask, max_new, assistant=assistant_model, do_sample=o.do_sample, eos=eos, procs=procs,
        criteria=stop, streamer=streamer, generator=generator,
        num_assistant_tokens=o.prompt_lookup_num_tokens or o.num_assistant_tokens or 5,
        schedule=o.num_assistant_tokens_schedule or "heuristic",
        lookup_ngram=(o.max_matching_ngram_size or 2) if o.prompt_lookup_num_tokens else None, mixing=mixing)
    if o.return_dict_in_generate:
        extra = {"drafted": stats.drafted, "accepted": stats.accepted, "rounds": stats.rounds}
        return AssistedOutput(out, tuple(scores) if o.output_scores else None, extra)
    return out
