"""Beam search for `ComposedLM`, as transformers does it, over the mixture's log-probabilities.

Split from `memreg.generation` (which checks the options and dispatches here) to keep each file
readable in one sitting. Shapes: B prompts, L prompt length (left-padded), V vocabulary, N beams.
"""

from __future__ import annotations

import math

import torch

from memreg.generation import GenerateOutput, _Stepper


def beam_search(model, ids, mask, max_new, nb, n_ret, length_penalty, eos, pad, procs, use_cache, output_scores, as_dict):
    """Beam search as transformers does it: 2N candidates per prompt, finished hypotheses scored
    sum(log p) / generated_length ** length_penalty, stop when no running beam can beat the N-th best."""
    b, prompt_len = ids.shape
    ids = ids.repeat_interleave(nb, 0)  # (B*N, L)
    mask = mask.repeat_interleave(nb, 0)
    stepper = _Stepper(model, use_cache)
    beam_scores = torch.zeros(b, nb, dtype=torch.float64, device=ids.device)
    beam_scores[:, 1:] = -math.inf  # all beams start equal: keep one, or the first step repeats
    beam_scores = beam_scores.view(-1)
    hyps: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    done = [False] * b
    eos_set = set(eos)
    scores: list[torch.Tensor] = []
    logp = stepper.first(ids, mask) if max_new > 0 else None
    for step in range(max_new):
        gen_len = step + 1
        step_scores = procs(ids, logp)  # (B*N, V)
        if output_scores:
            scores.append(step_scores)
        v = step_scores.shape[-1]
        cand = (step_scores.double() + beam_scores[:, None]).view(b, nb * v)
        top_scores, top_idx = cand.topk(2 * nb, dim=1)  # (B, 2N), sorted
        src, tok = top_idx // v, top_idx % v
        next_scores = torch.zeros(b, nb, dtype=torch.float64, device=ids.device)
        next_tok = torch.full((b, nb), pad, dtype=torch.long, device=ids.device)
        next_src = torch.zeros(b, nb, dtype=torch.long, device=ids.device)
        for i in range(b):
            if not done[i]:
                done[i] = _advance_prompt(i, top_scores[i].tolist(), tok[i].tolist(), src[i].tolist(), ids, nb,
                                          prompt_len, hyps[i], eos_set, gen_len, length_penalty,
                                          (next_scores[i], next_tok[i], next_src[i]))
        beam_idx = (torch.arange(b, device=ids.device)[:, None] * nb + next_src).view(-1)
        ids = torch.cat([ids[beam_idx], next_tok.view(-1, 1)], dim=1)
        mask = torch.cat([mask[beam_idx], torch.ones_like(mask[:, :1])], dim=1)
        beam_scores = next_scores.view(-1)
        if all(done) or step == max_new - 1:
            break
        logp = stepper.next(ids, mask, reorder=beam_idx)
    gen_len = ids.shape[1] - prompt_len
    for i in range(b):
        if not done[i]:
            for j in range(nb):
                _add_hyp(hyps[i], nb, float(beam_scores[i * nb + j]) / max(gen_len, 1) ** length_penalty,
                         ids[i * nb + j, prompt_len:])
    prompts = ids.view(b, nb, -1)[:, 0, :prompt_len]
    best = [(i, h) for i in range(b) for h in hyps[i][:n_ret]]
    width = max(len(seq) for _, (_, seq) in best) if best else 0
    out = torch.full((len(best), prompt_len + width), pad, dtype=torch.long, device=ids.device)
    for row, (i, (_, seq)) in enumerate(best):
        out[row, :prompt_len] = prompts[i]
        out[row, prompt_len : prompt_len + len(seq)] = seq
    if as_dict:
        seq_scores = torch.tensor([s for _, (s, _) in best], dtype=torch.float64)
        return GenerateOutput(out, tuple(scores) if output_scores else None, seq_scores)
    return out


def _advance_prompt(i, top_scores, tok, src, ids, nb, prompt_len, hyps, eos_set, gen_len, length_penalty, out) -> bool:
    """Prompt i's 2N sorted candidates -> its N running beams (written into `out`), finished
    hypotheses into `hyps`; True when no running beam can beat the N-th best finished one."""
    next_scores, next_tok, next_src = out
    k = 0
    for rank in range(2 * nb):
        s, t, r = top_scores[rank], tok[rank], src[rank]
        if s == -math.inf:
            break
        if t in eos_set:
            if rank < nb:  # an eos outside the top N does not end a hypothesis
                seq = torch.cat([ids[i * nb + r, prompt_len:], ids.new_tensor([t])])
                _add_hyp(hyps, nb, s / gen_len**length_penalty, seq)
            continue
        next_scores[k], next_tok[k], next_src[k] = s, t, r
        k += 1
        if k == nb:
            break
    best_running = float(next_scores[0]) / gen_len**length_penalty
    return len(hyps) == nb and hyps[-1][0] >= best_running


def _add_hyp(hyps: list[tuple[float, torch.Tensor]], nb: int, score: float, seq: torch.Tensor) -> None:
    """Keep the N best finished hypotheses, best first."""
    if len(hyps) == nb and score <= hyps[-1][0]:
        return
    hyps.append((score, seq.clone()))
    hyps.sort(key=lambda h: -h[0])
    del hyps[nb:]
