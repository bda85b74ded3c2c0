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

A batch of (left-padded) prompts decodes together: every round drafts K tokens for every row and
verifies them in one forward per member, but rows keep different numbers of drafts. The caches
stay rectangular: the slots of drafts a row rejected while another row kept more are masked out
(attention mask 0; positions count only unmasked slots), and slots every row rejected are cropped.
With one prompt there are never such holes: the loop is transformers' assisted generation.

Draft length: transformers' "heuristic" schedule (+2 after a fully kept draft, -1 otherwise, at
least 1) unless the schedule is "constant"; with `assistant_confidence_threshold` drafting also
stops early when the drafter's most likely token has less than that probability in every row (the
drafter is unsure: its next draft would likely be rejected, and costs a drafter forward and a
verified position).

Shapes: B rows, S cached slots, K drafts, V vocabulary.
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
    """How many tokens were drafted and how many of them the mixture kept (all rows together)."""

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


@dataclass
class Drafts:
    """One round's proposals: tokens (B, K) (a row with fewer, under prompt lookup, is filled with
    its last real draft or 0), how many are real per row, the drafter's processed scores (B, K, V)
    (None for greedy, which does not read them) and a drafting member's log-probabilities after the
    pending token and each draft (B, K+1, V), else None."""

    tokens: torch.Tensor
    counts: list[int]
    q_scores: torch.Tensor | None
    member_lps: torch.Tensor | None


class AssistedDecoder:
    """State of one assisted generation: each row's tokens (its left-padded prompt, then what it
    generated), the pending token of each row (emitted, not yet in any cache), the slot mask shared
    by every member's cache, one cache per member and the drafter's cache."""

    def __init__(self, model: ComposedForCausalLM, ids: torch.Tensor, mask: torch.Tensor, assistant: Any, procs: Any,
                 do_sample: bool, generator: torch.Generator | None, lookup_ngram: int | None = None,
                 mixing: Any = None, confidence: float | None = None) -> None:
        self.model, self.procs, self.do_sample, self.generator = model, procs, do_sample, generator
        self.drafter = _Drafter(model, assistant, lookup_ngram)
        self.confidence = confidence
        self.rows: list[list[int]] = ids.tolist()
        self.pending = ids[:, -1:]  # (B, 1)
        self.mask = mask.clone()  # (B, S + 1): the cached slots and the pending token's; edited in place
        self.caches: list[Any] = [None] * len(model.members)
        self.mixing = mixing if mixing is not None else model.member_weights  # or a (B, members - 1) tensor
        self.stats = DraftStats()
        if ids.shape[1] > 1:
            self._prefill(ids[:, :-1])

    @property
    def batch(self) -> int:
        return len(self.rows)

    def _forward(self, j: int | None, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (B, T) after the cached ones to member j (None: the outside drafter); (B, T, V)."""
        t = tokens.shape[1]
        mask = self.mask[:, : self._cached(j) + t]
        # positions count real slots only: left padding and the holes of rejected drafts take none
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

    def _prefill(self, prompt: torch.Tensor) -> None:
        for j in self._verifiers() + ([] if self.drafter.lookup_ngram else [self.drafter.member]):
            self._forward(j, prompt)

    def _verifiers(self) -> list[int]:
        """Members run over the drafts in one forward: all but a drafting member."""
        return [j for j in range(len(self.model.members)) if j != self.drafter.member]

    def _process(self, scores: torch.Tensor, extra: list[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
        """The processors applied to scores (B, V) after each row's tokens (+ `extra` (B, i) tokens).
        Rows differ in length, so each row is processed alone (processors are row-wise)."""
        if not self.procs:
            return scores
        out = []
        for b, row in enumerate(self.rows):
            ids = torch.tensor([row], device=scores.device)
            if extra is not None and extra.shape[1]:
                ids = torch.cat([ids, extra[b : b + 1]], dim=1)
            out.append(self.procs(ids, scores[b : b + 1].clone())[0])  # processors may edit scores in place
        return torch.stack(out)

    def draft(self, k: int) -> Drafts:
        """Propose up to k tokens per row (fewer when the drafter is unsure in every row)."""
        if self.drafter.lookup_ngram:
            return self._lookup(k)
        start = self.mask.shape[1]  # the pending token's slot is start - 1
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch, k)], dim=1)  # slots for k drafts
        lps = [self._forward(self.drafter.member, self.pending)[:, -1]]
        drafts: list[torch.Tensor] = []
        q_scores: list[torch.Tensor] = []
        for _ in range(k):
            q = self._process(lps[-1], torch.stack(drafts, 1) if drafts else None)
            if self.confidence is not None and bool((_top_probability(q) < self.confidence).all()):
                break
            if self.do_sample:
                tok = torch.multinomial(torch.softmax(q.double(), -1), 1, generator=self.generator)[:, 0]
            else:
                tok = q.argmax(-1)
            drafts.append(tok)
            q_scores.append(q)
            lps.append(self._forward(self.drafter.member, tok[:, None])[:, -1])
        self.mask = self.mask[:, : start + len(drafts)]
        tokens = torch.stack(drafts, 1) if drafts else self.pending.new_zeros(self.batch, 0)
        q_stack = None
        if self.do_sample:  # greedy never reads the drafter's scores
            q_stack = torch.stack(q_scores, 1) if q_scores else lps[0].new_zeros(self.batch, 0, lps[0].shape[-1])
        member_lps = torch.stack(lps, 1) if self.drafter.member is not None else None
        return Drafts(tokens, [len(drafts)] * self.batch, q_stack, member_lps)

    def _lookup(self, k: int) -> Drafts:
        """Drafts from each row's text so far; the drafter's distribution is a point mass on each draft."""
        found = [lookup_drafts(row, k, self.drafter.lookup_ngram) if k else [] for row in self.rows]
        width = max(len(f) for f in found)
        tokens = torch.tensor([f + [f[-1] if f else 0] * (width - len(f)) for f in found], dtype=torch.long,
                              device=self.pending.device).reshape(self.batch, width)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch, width)], dim=1)
        q = None
        if self.do_sample:
            q = torch.full((self.batch, width, self.model.vocab_size), -torch.inf, dtype=torch.float64)
            q.scatter_(2, tokens.cpu()[..., None], 0.0)
        return Drafts(tokens, [len(f) for f in found], q, None)

    def verify(self, d: Drafts) -> torch.Tensor:
        """The mixture's processed scores (B, K+1, V) after the pending token and after each draft."""
        tokens = torch.cat([self.pending, d.tokens], dim=1)  # (B, K+1)
        lps: list[torch.Tensor | None] = [None] * len(self.model.members)
        for j in self._verifiers():
            lps[j] = self._forward(j, tokens)
        if d.member_lps is not None:
            lps[self.drafter.member] = d.member_lps
        # float32 scores, as transformers' generate casts them: assisted and plain decoding compare the same numbers
        logp = mix_log_probs(widest(lps), self.mixing).float()  # (B, K+1, V)
        if not self.procs:
            return logp
        return torch.stack([self._process(logp[:, i], d.tokens[:, :i]) for i in range(tokens.shape[1])], dim=1)

    def step(self, k: int, active: list[bool]) -> tuple[list[list[int]], torch.Tensor]:
        """One round: draft up to k, verify, keep each row's n; returns each row's n+1 new tokens (none
        for an inactive row, whose slots are left as they are: its output is no longer read) and
        the scores (B, K+1, V)."""
        d = self.draft(k)
        k = d.tokens.shape[1]
        p_scores = self.verify(d)
        kept, new = [], []
        for b in range(self.batch):
            drafts = d.tokens[b, : d.counts[b]].tolist()
            if not active[b]:
                kept.append(k)
                new.append([])
                continue
            if self.do_sample:
                n, tok = pick_sampled(p_scores[b, : d.counts[b] + 1], d.q_scores[b, : d.counts[b]], drafts, self.generator)
            else:
                n, tok = pick_greedy(p_scores[b, : d.counts[b] + 1], drafts)
            kept.append(n)
            new.append(drafts[:n] + [tok])
            self.stats.drafted += d.counts[b]
            self.stats.accepted += n
        self.stats.rounds += 1
        # every cache holds the pending token and the k drafts: drop the slots no row kept, mask the
        # slots a row rejected while another kept them
        most = max(kept)
        for j in range(len(self.caches)):
            self.caches[j] = crop_cache(self.caches[j], k - most)
        self.drafter.cache = crop_cache(self.drafter.cache, k - most)
        self.mask = self.mask[:, : self.mask.shape[1] - (k - most)]
        end = self.mask.shape[1]
        for b, n in enumerate(kept):
            if n < most:
                self.mask[b, end - (most - n) :] = 0
            self.rows[b].extend(new[b])
        self.pending = torch.tensor([[row[-1]] for row in self.rows], device=self.pending.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch, 1)], dim=1)  # the new pending tokens' slot
        return new, p_scores


def _top_probability(scores: torch.Tensor) -> torch.Tensor:
    """(B, V) scores -> (B,) probability of each row's most likely token."""
    return torch.softmax(scores.double(), dim=-1).amax(dim=-1)


def _seq_length(cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])


def assisted_decode(model: ComposedForCausalLM, ids: torch.Tensor, mask: torch.Tensor, max_new: int, *, assistant: Any,
                    do_sample: bool, eos: list[int], procs: Any, criteria: Any, streamer: Any,
                    generator: torch.Generator | None, num_assistant_tokens: int = 5,
                    schedule: str = "heuristic", lookup_ngram: int | None = None, mixing: Any = None,
                    confidence: float | None = None, pad: int = 0,
                    ) -> tuple[torch.Tensor, list[torch.Tensor], DraftStats]:
    """Continue prompts (B, L) by up to max_new tokens each; returns (ids (B, L + longest), per-token
    scores (1, V) each (one prompt only; [] for a batch), stats). A row that stops early (eos, a
    stopping criterion) is filled with `pad`, as transformers' generate does.

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
    if confidence is not None and not 0 <= confidence <= 1:
        raise ValueError(f"assistant_confidence_threshold {confidence} must be a probability in [0, 1]")
    batch, length = ids.shape
    if streamer is not None and batch > 1:
        raise ValueError("a streamer takes one prompt: generate a batch without streamer=")
    dec = AssistedDecoder(model, ids, mask.long(), assistant, procs, do_sample, generator, lookup_ngram, mixing,
                          confidence)
    if streamer is not None:
        streamer.put(ids.cpu())
    made = [0] * batch  # tokens each row has emitted
    active = [max_new > 0] * batch
    scores: list[torch.Tensor] = []
    k = num_assistant_tokens
    while any(active):
        left = min(max_new - made[b] for b in range(batch) if active[b])
        k_now = min(k, left - 1)
        new, p_scores = dec.step(k_now, active)
        drafted_now = p_scores.shape[1] - 1
        for b in range(batch):
            if not active[b]:
                continue
            for i, tok in enumerate(new[b]):
                made[b] += 1
                if batch == 1:
                    scores.append(p_scores[0, i][None])
                    if streamer is not None:
                        streamer.put(ids.new_tensor([tok]).cpu())
                if (tok in eos or made[b] >= max_new or (criteria and bool(criteria(
                        torch.tensor([dec.rows[b][: length + made[b]]], device=ids.device), p_scores[b, i][None]).any()))):
                    active[b] = False
                    del dec.rows[b][length + made[b]:]  # tokens kept after the stop are not output
                    break
        if schedule == "heuristic":
            full = drafted_now == k_now == k and all(len(new[b]) - 1 == k for b in range(batch) if new[b])
            k = k + 2 if full else max(1, k - 1)
    if streamer is not None:
        streamer.end()
    longest = max(made)
    out = torch.tensor([row[: length + made[b]] + [pad] * (longest - made[b]) for b, row in enumerate(dec.rows)],
                       dtype=ids.dtype, device=ids.device).reshape(batch, length + longest)
    return out, scores, dec.stats


@torch.inference_mode()
def generate_assisted(model: ComposedForCausalLM, inputs: torch.Tensor | None = None, *, generation_config: Any = None,
                      generator: torch.Generator | None = None, input_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, weights: Any = None, assistant_model: Any = None,
                      streamer: Any = None, logits_processor: Any = None, stopping_criteria: Any = None,
                      tokenizer: Any = None, **kwargs: Any) -> torch.Tensor | AssistedOutput:
    """`model.generate(..., assistant_model=...)` or `prompt_lookup_num_tokens=`: prompts (B, L),
    left-padded with their attention_mask when B > 1."""
    from memreg.decode.options import criteria, processors, special_ids

    ids = inputs if inputs is not None else input_ids
    if ids is None or ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError("generate() needs input_ids of shape (batch, length) with at least one token")
    if getattr(model, "routed", False) and weights is None:
        # the drafting loop mixes with fixed weights; a router's per-token weights would make its
        # output differ from plain decoding's, which drafting must never do
        raise ValueError("drafting (assistant_model= / prompt_lookup_num_tokens=) mixes with fixed weights and this "
                         "composition has a router: generate without drafting, or set use_router = False")
    o = read_options(model, generation_config, kwargs)
    if o.num_beams not in (None, 1) or o.num_return_sequences not in (None, 1):
        raise ValueError("assisted decoding gives one sequence per prompt: use num_beams=1, num_return_sequences=1")
    if assistant_model is not None and o.prompt_lookup_num_tokens:
        raise ValueError("give assistant_model or prompt_lookup_num_tokens, not both: one source of drafts")
    if o.temperature is not None and o.temperature <= 0:
        raise ValueError(f"temperature {o.temperature} must be > 0 (for greedy decoding use do_sample=False)")
    if ids.shape[0] > 1 and (o.output_scores or o.output_logits):
        raise ValueError("output_scores with drafting takes one prompt at a time (the rows of a batch advance by "
                         "different numbers of tokens per round): generate the prompts one by one")
    max_new = o.max_new_tokens if o.max_new_tokens is not None else (o.max_length or 20) - ids.shape[1]
    ids = ids.to(model.device)
    mask = (attention_mask if attention_mask is not None else torch.ones_like(ids)).to(model.device).long()
    if ids.shape[0] > 1 and bool((mask[:, -1] == 0).any()):
        raise ValueError("a batch for drafting must be left-padded (tokenizer padding_side='left'): a row's last "
                         "token is padding")
    model.check_length(ids.shape[1] + max_new)
    eos, pad = special_ids(model, o.eos_token_id, o.pad_token_id)
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
        lookup_ngram=(o.max_matching_ngram_size or 2) if o.prompt_lookup_num_tokens else None, mixing=mixing,
        confidence=o.assistant_confidence_threshold if not o.prompt_lookup_num_tokens else None, pad=pad)
    if o.return_dict_in_generate:
        extra = {"drafted": stats.drafted, "accepted": stats.accepted, "rounds": stats.rounds}
        return AssistedOutput(out, tuple(scores) if o.output_scores else None, extra)
    return out
