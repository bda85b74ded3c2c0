"""Ways to run a base and its memory at once, for bench/attach_overhead.py (the product's
ComposedForCausalLM runs its members one after the other on one stream; this module does not change it).

StreamOverlapLM   a ComposedForCausalLM whose memories run in a helper thread, each on its own CUDA stream,
                  while the calling thread runs the base: the two models' kernel launches (the cost
                  of batch-1 decoding) overlap as far as the GIL lets them. Used through the
                  model's forward / transformers' generate, so scoring and decoding both use it. On a
                  CPU it is just a thread (the rehearsal checks the outputs equal the plain ones).
StaticDecoder     greedy decoding of one member with transformers' StaticCache and an explicit 4-D
                  mask, so every decoding step has the same shapes; on CUDA that step is captured
                  once as a CUDA graph and replayed (one launch per model and token).
greedy_static     the mixture's greedy decoding over StaticDecoders, the members' steps replayed one
                  after the other or on one CUDA stream each (`streams=True`).
"""

from __future__ import annotations

import copy
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from memreg.compose import ComposedCache, ComposedForCausalLM
from memreg.compose.model import CACHE_KEY
from memreg.compose.members import member_step, widest
from memreg.mixture import mix_log_probs

# What transformers' generate passes to forward although it is no input of the mixture
_PASSED_BY_GENERATE = ("cache_position", "tokenizer", "assistant_tokenizer")


# ----------------------------------------------------------------------------------- streams
class StreamOverlapLM(ComposedForCausalLM):
    """A composition whose memories run beside the base (a thread; on CUDA one stream per member).

    Only `forward` differs from the product's: the members' steps (`memreg.compose.members.member_step`,
    the product's own) are started together instead of one after the other, then mixed as the product
    mixes them. transformers' generate and `memreg.evaluate` call this forward as they call the product's.
    It takes the inputs scoring and greedy decoding pass; anything else (labels, per-member attentions
    or hidden states, token types) is refused by name rather than silently dropped."""

    @classmethod
    def like(cls, composed: ComposedForCausalLM) -> "StreamOverlapLM":
        """The same members, weights, tokenizer and generation defaults as `composed`."""
        members = list(composed.members)
        out = cls.from_members(members[0], [members[j] for j in composed.member_of_memory], composed.weights,
                               vocab_size=composed.vocab_size, tokenizer=composed.tokenizer, names=composed.names)
        out.generation_config = copy.deepcopy(composed.generation_config)
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if getattr(self, "_executor", None) is None:
            self._executor = ThreadPoolExecutor(max_workers=max(1, len(self.members) - 1))
            cuda = self.device.type == "cuda"
            self._streams = [torch.cuda.Stream(device=self.device) if cuda and j else None for j in range(len(self.members))]
        return self._executor

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: ComposedCache | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, weights: Any = None,
                past_key_values: ComposedCache | None = None, return_dict: bool | None = None,
                **rest: Any) -> CausalLMOutputWithPast | tuple:
        asked = sorted(k for k, v in rest.items() if v is not None and v is not False and k not in _PASSED_BY_GENERATE)
        if asked:
            raise TypeError(f"StreamOverlapLM.forward: {', '.join(asked)} not supported by this benchmark variant")
        cache, use_cache, position_ids = self.prepare_step(input_ids, attention_mask, position_ids,
                                                           cache if cache is not None else past_key_values, use_cache)
        extra = {"logits_to_keep": logits_to_keep or None}

        def run(j: int):
            return member_step(self.members[j], self.member_keys[j], self.vocab_size, input_ids,
                               attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache.members[j] if cache is not None else None, use_cache=use_cache, extra=extra)

        pool = self._pool()
        main = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def side(j: int):
            stream = self._streams[j]
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):  # both are per thread
                if stream is None:
                    return run(j)
                stream.wait_stream(main)  # the inputs were made on the caller's stream
                with torch.cuda.stream(stream):
                    for x in (input_ids, attention_mask, position_ids):
                        if x is not None:
                            x.record_stream(stream)
                    return run(j)

        futures = {j: pool.submit(side, j) for j in range(1, len(self.members))}
        results = {0: run(0)}
        for j, fut in futures.items():
            results[j] = fut.result()
            if main is not None:
                main.wait_stream(self._streams[j])
                results[j].log_probs.record_stream(main)
        lps = widest([results[j].log_probs for j in range(len(self.members))])
        mixing = self.member_weights if weights is None else self.row_member_weights(weights, input_ids.shape[0])
        out = CausalLMOutputWithPast(logits=mix_log_probs(lps, mixing), **{CACHE_KEY: cache if use_cache else None})
        return out if return_dict is None or return_dict else out.to_tuple()


# ------------------------------------------------------------------------- static cache + graphs
class StaticDecoder:
    """One member's greedy decoding steps with a StaticCache of `max_len` positions for `batch` rows."""

    def __init__(self, model, batch: int, max_len: int, vocab: int, *, graph: bool):
        from transformers import StaticCache

        self.model, self.B, self.L, self.V = model, batch, max_len, vocab
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5 / 4.x names
        self.with_cache_position = "cache_position" in params
        dev = next(model.parameters()).device
        self.mask = torch.zeros(batch, 1, 1, max_len, dtype=torch.bool, device=dev)  # keys seen so far
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # the token fed at the next step
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # its position
        self.want_graph = graph and dev.type == "cuda"
        self.graph, self.out = None, None

    def _forward(self, ids, mask4, cache_position):
        kw: dict[str, Any] = {self.cache_kw: self.cache, "use_cache": True, "attention_mask": mask4,
                              "position_ids": cache_position.view(1, -1).expand(ids.shape[0], -1)}
        if self.with_cache_position:
            kw["cache_position"] = cache_position
        logits = self.model(input_ids=ids, **kw).logits[:, -1, : self.V]
        return torch.log_softmax(logits.float(), dim=-1)

    def _lengths(self) -> list[torch.Tensor]:
        """transformers >= 5.2x keeps each static layer's length as a tensor it advances itself."""
        return [layer.cumulative_length for layer in getattr(self.cache, "layers", [])
                if torch.is_tensor(getattr(layer, "cumulative_length", None))]

    @torch.inference_mode()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, P) into an emptied cache; log-probs of the next token (B, V)."""
        p = prompt.shape[1]
        for n in self._lengths():
            n.zero_()
        dev = prompt.device
        q, kv = torch.arange(p, device=dev), torch.arange(self.L, device=dev)
        causal = (kv[None, :] <= q[:, None])[None, None].expand(self.B, 1, p, self.L)
        lp = self._forward(prompt, causal, q)
        self.mask.zero_()
        self.mask[..., :p] = True
        self.pos.fill_(p)
        if self.want_graph and self.graph is None:
            self._capture(p)
        return lp

    def _step(self) -> torch.Tensor:
        self.mask.index_fill_(-1, self.pos, True)
        out = self._forward(self.tok, self.mask, self.pos)
        self.pos.add_(1)
        return out

    def _capture(self, p: int) -> None:
        lengths = [n.clone() for n in self._lengths()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (kernels chosen, workspaces allocated) outside the graph
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._step()
        self._restore(p, lengths)

    def _restore(self, p: int, lengths: list[torch.Tensor]) -> None:
        self.mask[..., p:] = False
        self.pos.fill_(p)
        for n, v in zip(self._lengths(), lengths):
            n.copy_(v)

    @torch.inference_mode()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed tokens (B,); log-probs of the next ones (B, V) (a graph's output buffer: read before the next step)."""
        self.tok.copy_(tok.view(self.B, 1))
        if self.graph is not None:
            self.graph.replay()
            return self.out
        return self._step()


@torch.inference_mode()
def greedy_static(decoders: list[StaticDecoder], weights: list[float], prompt: torch.Tensor, new_tokens: int,
                  *, streams: bool = False) -> torch.Tensor:
    """Greedy decoding of the mixture of `decoders` (base first; `weights` one per memory): (B, P + new)."""
    lps = [d.prefill(prompt) for d in decoders]
    cuda = prompt.device.type == "cuda"
    side = [torch.cuda.Stream() for _ in decoders] if streams and cuda else None
    out = []
    for i in range(new_tokens):
        lp = lps[0] if len(decoders) == 1 else mix_log_probs(lps, weights)
        tok = lp.argmax(-1)
        out.append(tok)
        if i == new_tokens - 1:
            break
        if side is None:
            lps = [d.step(tok) for d in decoders]
        else:
            main = torch.cuda.current_stream()
            lps = []
            for d, s in zip(decoders, side):
                s.wait_stream(main)
                with torch.cuda.stream(s):
                    tok.record_stream(s)
                    lps.append(d.step(tok))
            for s in side:
                main.wait_stream(s)
    return torch.cat([prompt, torch.stack(out, 1)], dim=1)
