"""`ComposedForCausalLM`: a base causal LM and its memories, as one transformers causal LM.

Every member reads the same ids with its own KV cache (`ComposedCache`); the forward pass returns
the mixture's normalised log-probabilities as `logits` (B, T, V), mixed by `memreg.mixture`.
Members with more embedding rows than the tokenizer has tokens are sliced to `vocab_size` before
the log-softmax. Decoding is transformers' own `GenerationMixin.generate` (processors, warpers,
beam search, streamers, output dicts), except drafting (`assistant_model=`,
`prompt_lookup_num_tokens=`), which is memreg's own (`memreg.decode.assisted`): a memory that
drafts has its log-probabilities computed once and reused by the mixture.

The model holds no weights of its own: `save_pretrained` writes config.json (references to the
members, see `CompositionConfig`) and generation_config.json; `from_pretrained` / the Auto classes
rebuild it by composing those references again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from memreg.compose.cache import ComposedCache
from memreg.compose.config import CompositionConfig
from memreg.compose.members import context_length, embedding_rows, forward_keys, member_step, widest
from memreg.compose.registration import register_auto
from memreg.mixture import check_row_weights, check_weights, mix_log_probs
from memreg.core.errors import CompositionFileError, ContextTooLongError


# transformers 5 names a model's cache `cache`, 4.x `past_key_values` (in outputs and generate's kwargs)
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class ComposedForCausalLM(PreTrainedModel, GenerationMixin):
    """A base LM mixed with memories: p = (1 - sum w) p_base + sum_i w_i p_mem_i.

    `members` are distinct modules, base first; `member_of_memory[i]` says which member memory i is
    (the same memory composed twice is one module, its weights added: the mixture is the same).
    Build one with `memreg.compose(...)`, or rebuild a saved one with `from_pretrained(folder)`.
    """

    config_class = CompositionConfig
    base_model_prefix = "composition"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # forward's `logits` are already normalised log-probabilities (scorers skip a log-softmax)
    outputs_log_probs = True

    def __init__(self, config: CompositionConfig, members: Sequence[nn.Module] | None = None, *,
                 member_of_memory: Sequence[int] | None = None, tokenizer: Any = None) -> None:
        if members is None:
            raise TypeError("a composition is built from its members: use memreg.compose(base, memories, weights) "
                            "or ComposedForCausalLM.from_pretrained(folder)")
        super().__init__(config)
        self.members = nn.ModuleList(members)
        n_mem = len(config.memories or [])
        self.member_of_memory = list(member_of_memory) if member_of_memory is not None else list(range(1, n_mem + 1))
        if len(self.member_of_memory) != n_mem or any(not 0 < j < len(self.members) for j in self.member_of_memory):
            raise ValueError(f"{n_mem} memories but member_of_memory {self.member_of_memory} for {len(self.members)} members")
        self.names = list(config.names or [f"memory {i}" for i in range(n_mem)])
        self.tokenizer = tokenizer
        rows = [embedding_rows(m) for m in self.members]
        config.vocab_size = int(config.vocab_size) if config.vocab_size else min(rows)
        if min(rows) < config.vocab_size:
            raise ValueError(f"a member has {min(rows)} embedding rows, fewer than the vocabulary's {config.vocab_size}")
        limits = [n for m in self.members if (n := context_length(m))]
        config.max_position_embeddings = min(limits) if limits else None
        self.member_keys = [forward_keys(m) for m in self.members]  # what each member's forward takes
        self.set_weights(config.weights or [0.0] * n_mem)
        self.router: nn.Module | None = None  # per-token weights (memreg.router), see set_router
        self.use_router = True  # False: the fixed weights even where a router is set (the opt-out)
        self.generation_config = _generation_config(self.members[0], tokenizer)
        self.post_init()

    # A composition owns no parameters of its own: nothing to initialise or tie (the members were loaded).
    def init_weights(self) -> None:
        pass

    def _init_weights(self, module: nn.Module) -> None:
        pass

    # ------------------------------------------------------------------ mixture weights
    @property
    def weights(self) -> list[float]:
        return list(self.config.weights)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_positions(self) -> int | None:
        """The context limit: the smallest member's position table (None if no member says)."""
        return self.config.max_position_embeddings

    @property
    def member_weights(self) -> list[float]:
        """Weight of each distinct member except the base (duplicates added)."""
        out = [0.0] * (len(self.members) - 1)
        for j, w in zip(self.member_of_memory, self.config.weights):
            out[j - 1] += w
        return out

    def per_memory(self, member_weights: Sequence[float]) -> list[float]:
        """One weight per distinct member (base excluded) -> one per memory: a memory composed
        twice splits its member's share, so the mixture is the same."""
        counts = [self.member_of_memory.count(j) for j in range(len(self.members))]
        return [member_weights[j - 1] / counts[j] for j in self.member_of_memory]

    def set_weights(self, weights: Sequence[float]) -> None:
        """New mixture weights, one per memory: checked here, where they enter."""
        weights = check_weights(weights)
        if len(weights) != len(self.member_of_memory):
            raise ValueError(f"{len(self.member_of_memory)} memories but {len(weights)} weights: give one weight per memory")
        self.config.weights = weights
        self._member_weights = self.member_weights

    def row_member_weights(self, weights: Any, rows: int) -> torch.Tensor:
        """forward(weights=(B, M)): checked, then per distinct member (B, members - 1)."""
        w = check_row_weights(weights, rows, len(self.member_of_memory))
        out = torch.zeros(rows, len(self.members) - 1, dtype=torch.float64)
        return out.index_add_(1, torch.tensor(self.member_of_memory) - 1, w)

    def set_router(self, router: nn.Module | None) -> None:
        """Mix with per-token weights from `router` (a memreg.router.Router), or None for the fixed
        weights. Refused (RouterMismatchError) unless it was fitted for this base (tokenizer
        fingerprint, hidden size) and this many distinct members."""
        if router is not None:
            from memreg.router.io import check_router, hidden_size_of
            from memreg.registry.fingerprinting import fingerprint

            if self.tokenizer is None:
                from memreg.core.errors import RouterMismatchError

                raise RouterMismatchError("a router is bound to its base's tokenizer: compose with tokenizer=")
            check_router(router.config, tokenizer_digest=fingerprint(self.tokenizer).digest,
                         hidden_sizes=[hidden_size_of(m) for m in self.members])
            router = router.to(next(self.base.parameters()).device).eval()
        self.router = router

    @property
    def routed(self) -> bool:
        """Whether forward mixes with the router's per-token weights (a router is set and not opted out)."""
        return self.router is not None and self.use_router

    @property
    def base(self) -> nn.Module:
        return self.members[0]

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> None:
        return None  # the output is a mixture, not one embedding

    # ------------------------------------------------------------------ forward
    def prepare_step(self, input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None,
                     position_ids: torch.LongTensor | None, cache: ComposedCache | None,
                     use_cache: bool | None) -> tuple[ComposedCache | None, bool, torch.LongTensor]:
        """(cache, use_cache, position_ids) for one forward over `input_ids`, checked against the
        context limit and the cache: what every forward does before it runs the members."""
        if input_ids is None:
            raise ValueError("forward() needs input_ids (B, T)")
        if cache is not None and not isinstance(cache, ComposedCache):
            raise TypeError(f"cache is a {type(cache).__name__}: a composition keeps one cache per member in a "
                            "ComposedCache (ComposedCache.for_members(model.members)), or pass none")
        use_cache = bool(use_cache) or cache is not None
        if use_cache and cache is None:
            cache = ComposedCache.for_members(self.members)
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        self.check_length(past + t)
        if attention_mask is not None and attention_mask.shape[-1] != past + t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {past + t} "
                             f"({past} cached + {t} new)")
        if position_ids is None:
            position_ids = _positions(attention_mask, past, t, input_ids.device, b)
        return cache, use_cache, position_ids

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ComposedCache | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        weights: torch.Tensor | Sequence[Sequence[float]] | None = None,
        past_key_values: ComposedCache | None = None,
        **unexpected: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids (B, T) after what `cache` holds; attention_mask (B, past + T); returns the
        mixture's log-probabilities (B, T, V) as `logits` (the last `logits_to_keep` positions if set).

        weights: (B, M) per-row memory weights (each row by the mixture rule), else the router's
        per-token weights where a router is set (and `use_router`), else the model's own.
        position_ids, token_type_ids: passed to the members whose forward takes them.
        output_attentions / output_hidden_states: one entry per member, base first (each the
        member's own tuple): the members' layers differ, so there is no single stack."""
        _refuse_unexpected(unexpected)
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds: each member embeds the ids with its own table; pass input_ids")
        cache, use_cache, position_ids = self.prepare_step(input_ids, attention_mask, position_ids,
                                                           cache if cache is not None else past_key_values, use_cache)
        if token_type_ids is not None and not any("token_type_ids" in k for k in self.member_keys):
            raise TypeError("token_type_ids: no member's forward takes them; tokenize with return_token_type_ids=False")
        route = weights is None and self.routed
        # a router reading hidden states needs them from every member, asked for or not
        hidden = bool(output_hidden_states) or (route and self.router.uses_hidden)
        extra = {"token_type_ids": token_type_ids, "output_attentions": output_attentions or None,
                 "output_hidden_states": hidden or None, "logits_to_keep": logits_to_keep or None}
        steps = [
            member_step(m, self.member_keys[j], self.vocab_size, input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, cache=cache.members[j] if cache is not None else None,
                        use_cache=use_cache, extra=extra)
            for j, m in enumerate(self.members)
        ]
        if route:
            mixing = self._routed_weights(steps)  # (B, T', members - 1), per position
        else:
            mixing = self._member_weights if weights is None else self.row_member_weights(weights, input_ids.shape[0])
        logp = mix_log_probs(widest([s.log_probs for s in steps]), mixing)
        out = CausalLMOutputWithPast(
            loss=_loss(logp, labels) if labels is not None else None,
            logits=logp,
            **{CACHE_KEY: cache if use_cache else None},
            attentions=tuple(s.attentions for s in steps) if output_attentions else None,
            hidden_states=tuple(s.hidden_states for s in steps) if output_hidden_states else None,
        )
        return out if return_dict is None or return_dict else out.to_tuple()

    def _routed_weights(self, steps: list) -> torch.Tensor:
        """The router's memory weights at each position the members returned (B, T', members - 1):
        features of this step only, so decoding with a cache routes token by token."""
        from memreg.router.features import position_inputs

        lps = [s.log_probs for s in steps]
        hidden = None
        if self.router.uses_hidden:
            kept = lps[0].shape[1]
            hidden = [s.hidden_states[-1][:, -kept:] for s in steps]
        return self.router.memory_weights(position_inputs(lps, hidden))

    def check_length(self, positions: int) -> None:
        """Refuse more positions than the smallest member holds (a member would fail with an IndexError)."""
        limit = self.max_positions
        if limit is not None and positions > limit:
            raise ContextTooLongError(
                f"{positions} positions: this composition reads at most {limit} (the smallest member's position "
                "table); shorten the input, or score long text in sliding windows (memreg.evaluate)")

    # ------------------------------------------------------------------ generation
    def _prepare_cache_for_generation(self, generation_config: GenerationConfig, model_kwargs: dict,
                                      *args: Any, **kwargs: Any) -> None:
        """transformers' generate asks for a cache here: one dynamic cache per member."""
        given = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
        if given is not None:
            if not isinstance(given, ComposedCache):
                raise TypeError(f"cache is a {type(given).__name__}: pass a ComposedCache or none")
            return
        if generation_config.use_cache is False:
            return
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic"):
            raise ValueError(f"cache_implementation={implementation!r}: a composition keeps one dynamic cache per "
                             "member (each with its own layers); leave cache_implementation unset")
        model_kwargs[CACHE_KEY] = ComposedCache.for_members(self.members)

    def _valid_auto_compile_criteria(self, *args: Any, **kwargs: Any) -> bool:
        return False  # the members run one after another in eager mode: nothing to compile as one graph

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 *, generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        """transformers' generate (every option it offers for a decoder-only model), plus:

        weights: (B, M) per-row memory weights, each prompt its own mixture;
        generator: a torch.Generator that sampling draws from (instead of the global seed);
        assistant_model (a memory, its name, or another causal LM with the tokenizer) or
        prompt_lookup_num_tokens: memreg's drafting (`memreg.decode.assisted`), where the mixture
        decides every token and a drafting memory's log-probabilities are reused.

        generate(input_ids, attention_mask) with the mask second, as memreg's SDK took it before it
        was a transformers model, still works (transformers' second positional is generation_config)."""
        if isinstance(generation_config, torch.Tensor):
            kwargs["attention_mask"], generation_config = generation_config, None
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens") or (
                generation_config is not None and generation_config.prompt_lookup_num_tokens):
            from memreg.decode.assisted import generate_assisted

            if self.routed:
                raise ValueError("drafting (assistant_model=, prompt_lookup_num_tokens=) mixes with the fixed weights "
                                 "and does not run the router yet: set model.use_router = False (--no-router) to draft")

            return generate_assisted(self, inputs, generation_config=generation_config, generator=generator, **kwargs)
        if generator is None:
            return super().generate(inputs, generation_config=generation_config, **kwargs)
        with _rng_from(generator):
            return super().generate(inputs, generation_config=generation_config, **kwargs)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write config.json (references, never the members' weights), generation_config.json and the
        tokenizer (so AutoTokenizer and servers load it from the same folder); returns config.json."""
        missing = ([] if self.config.base else ["the base"]) + [
            n for n, m in zip(self.names, self.config.memories or []) if not m]
        if missing:
            raise ValueError(f"cannot save this composition: {', '.join(missing)} was passed as a loaded model; compose "
                             "from folders, Hub ids or registry references to save it")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.router = "router" if self.router is not None else None
        self.config.save_pretrained(out)
        self.generation_config.save_pretrained(out)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(out)
        if self.router is not None:  # beside the composition, in the package layout (router/)
            from memreg.router.io import save_router
            from memreg.schemas.router import ROUTER_FOLDER

            save_router(self.router, out / ROUTER_FOLDER)
        return out / "config.json"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                        config: CompositionConfig | None = None, **kwargs: Any) -> "ComposedForCausalLM":
        """Rebuild a saved composition by composing its references again (memory weights are checked
        against the base's tokenizer, registry versions against their recorded digests).

        Keyword arguments: dtype / torch_dtype, device_map (one device), and compose()'s registry,
        force, trust and public_keys; the Hub keywords AutoModelForCausalLM adds are accepted."""
        from memreg.compose.assemble import assemble_saved

        if model_args:
            raise TypeError("from_pretrained(folder, **options): no positional model arguments")
        folder = Path(pretrained_model_name_or_path).expanduser()
        if config is None:
            if (folder / "memreg-composition.json").exists() and not (folder / "config.json").exists():
                raise CompositionFileError(f"{folder} holds a memreg-composition.json from an earlier memreg: compose "
                                           "the same base and memories again and save_pretrained them")
            config = CompositionConfig.from_pretrained(folder, trust_remote_code=False)
        if not isinstance(config, CompositionConfig):
            raise TypeError(f"{folder} holds a {type(config).__name__}, not a memreg composition")
        use_router = kwargs.pop("use_router", True)
        parts = assemble_saved(config, folder if folder.is_dir() else None, **kwargs)
        model = cls(parts.config, parts.members, member_of_memory=parts.member_of_memory, tokenizer=parts.tokenizer).eval()
        if config.router and use_router and folder.is_dir():  # saved beside the composition: refused if it no longer fits the base
            from memreg.router.io import load_router

            model.set_router(load_router(folder / config.router))
        return model

    @classmethod
    def from_members(cls, base: nn.Module, memories: Sequence[nn.Module], weights: Sequence[float], *,
                     vocab_size: int | None = None, tokenizer: Any = None,
                     names: Sequence[str] | None = None) -> "ComposedForCausalLM":
        """A composition of models already loaded (no references: it cannot be saved)."""
        distinct: list[nn.Module] = [base]
        member_of_memory: list[int] = []
        for m in memories:
            j = next((i for i, d in enumerate(distinct) if d is m), None)
            if j is None:
                distinct.append(m)
                j = len(distinct) - 1
            member_of_memory.append(j)
        config = CompositionConfig(base=None, memories=[None] * len(memories), weights=list(weights),
                                   names=list(names) if names is not None else None, vocab_size=vocab_size)
        return cls(config, distinct, member_of_memory=member_of_memory, tokenizer=tokenizer).eval()


# The name the SDK used before the composition was a transformers model.
ComposedLM = ComposedForCausalLM


def _positions(mask: torch.Tensor | None, past: int, t: int, device: torch.device, rows: int) -> torch.Tensor:
    """New tokens' positions as transformers' generate makes them: real tokens before, pads at 0."""
    if mask is None:
        return torch.arange(past, past + t, device=device).expand(rows, t)
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)[:, -t:]


def _loss(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of labels[:, 1:] (-100 ignored), as transformers' causal LM loss."""
    shift = logp[:, :-1].reshape(-1, logp.shape[-1])
    return nn.functional.nll_loss(shift, labels[:, 1:].reshape(-1).to(shift.device), ignore_index=-100)


# What transformers' generate and Trainer pass to every model's forward though they are not inputs
# (generate's `tokenizer` reaches forward through its model kwargs): accepted, and meaningless here.
_NOT_INPUTS = ("cache_position", "num_items_in_batch", "tokenizer", "assistant_tokenizer")


def _refuse_unexpected(unexpected: dict[str, Any]) -> None:
    named = sorted(k for k, v in unexpected.items() if v is not None and k not in _NOT_INPUTS)
    if named:
        raise TypeError(f"forward() got {', '.join(named)}, which a composition does not take (it would be ignored)")


def _generation_config(base: nn.Module, tokenizer: Any) -> GenerationConfig:
    """The base's generation defaults (its eos, pad, bos; its sampling settings), the tokenizer's
    special tokens where the base's config names none."""
    base_cfg = getattr(base, "generation_config", None)
    cfg = GenerationConfig.from_dict(base_cfg.to_dict()) if base_cfg is not None else GenerationConfig.from_model_config(base.config)
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(cfg, name, None) is None:
            value = getattr(tokenizer, name, None) if tokenizer is not None else getattr(base.config, name, None)
            if value is not None:
                setattr(cfg, name, value)
    return cfg


class _rng_from:
    """Sampling draws from the global RNG in transformers' loops: run it on `generator`'s state
    (restored after, the generator advanced), so generator= gives reproducible draws as in torch."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.cuda = generator.device.type == "cuda"

    def __enter__(self) -> None:
        self.fork = torch.random.fork_rng(devices=[self.generator.device] if self.cuda else [])
        self.fork.__enter__()
        if self.cuda:
            torch.cuda.set_rng_state(self.generator.get_state(), self.generator.device)
        else:
            torch.set_rng_state(self.generator.get_state())

    def __exit__(self, *exc: Any) -> None:
        state = torch.cuda.get_rng_state(self.generator.device) if self.cuda else torch.get_rng_state()
        self.generator.set_state(state)
        self.fork.__exit__(*exc)


# AutoConfig / AutoModelForCausalLM find the composition by its model_type (see registration.py)
register_auto(CompositionConfig, ComposedForCausalLM)
