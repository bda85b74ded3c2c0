"""The datastore's keys are the input of the last block's MLP (last_ffn_input), on four families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files  # noqa: E402
from train_helpers import make_model, make_tokenizer, single_thread_fixture  # noqa: E402

from memreg.train.corpus import TokenArray, write_tokens, Document  # noqa: E402
from memreg.train.datastore import blocks, build_datastore, last_ffn_inputs, last_mlp, open_datastore  # noqa: E402
from memreg.train.errors import UnsupportedArchitectureError  # noqa: E402

FAMILIES = ["gpt2", "llama", "qwen2", "mistral"]

_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(folder)
    return folder


def _norm_before_mlp(model, family: str):
    block = model.transformer.h[-1] if family == "gpt2" else model.model.layers[-1]
    return block.ln_2 if family == "gpt2" else block.post_attention_layernorm


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_captures_the_mlp_input(tmp_path, tok_dir, family):
    model = make_model(tmp_path / family, family, tokenizer_from=tok_dir).eval()
    ids = torch.randint(0, 300, (2, 16))
    seen = []
    handle = _norm_before_mlp(model, family).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=ids)  # the whole forward, another way to reach the same tensor
    handle.remove()
    keys = last_ffn_inputs(model, ids)
    assert keys.shape == (2, 16, model.config.hidden_size)
    torch.testing.assert_close(keys, seen[0], rtol=1e-5, atol=1e-6)


def test_gpt2_keys_equal_a_manual_last_block(tmp_path, tok_dir):
    model = make_model(tmp_path / "g", "gpt2", tokenizer_from=tok_dir).eval()
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]  # input of the last block
        block = model.transformer.h[-1]
        a = block.attn(block.ln_1(h))[0]
        want = block.ln_2(h + a)
    torch.testing.assert_close(last_ffn_inputs(model, ids), want, rtol=1e-5, atol=1e-5)


def test_unknown_architecture_is_named():
    with pytest.raises(UnsupportedArchitectureError, match="Linear"):
        last_mlp(torch.nn.Linear(2, 2))


def test_build_datastore_rows_values_and_resume(tmp_path, tok_dir):
    from transformers import AutoTokenizer

    model = make_model(tmp_path / "m", "llama", tokenizer_from=tok_dir).eval()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = licence_files(["BSD"])[0].read_text()
    write_tokens(tmp_path, "train", [Document("bsd", text)], lambda t: tok(t)["input_ids"], tok.eos_token_id)
    tokens = TokenArray(tmp_path, "train")
    out = tmp_path / "ds"
    out.mkdir()
    n = build_datastore(model, tokens, out, block_size=24, batch_size=4)
    keys, values = open_datastore(out)
    assert n == len(tokens) - 1 == len(keys) == len(values)
    assert keys.dtype == np.float16 and values.dtype == np.int32
    np.testing.assert_array_equal(values, tokens.slice(1, len(tokens)))
    a, b = blocks(len(tokens), 24)[3]
    want = last_ffn_inputs(model, torch.as_tensor(tokens.slice(a, b))[None])[0].numpy().astype(np.float16)
    np.testing.assert_allclose(keys[a:b].astype(np.float32), want.astype(np.float32), atol=2e-3)
    # a re-run with every batch recorded as done writes nothing new (resume)
    before = keys.copy()
    build_datastore(model, tokens, out, block_size=24, batch_size=4)
    np.testing.assert_array_equal(open_datastore(out)[0], before)


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_release_rows_drops_mapped_pages_from_the_rss_and_keeps_the_data(tmp_path):
    from memreg.train.datastore import release_rows

    n, dim = 32_768, 512  # 32 MiB of float16
    keys = np.lib.format.open_memmap(tmp_path / "keys.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    keys[:] = np.arange(n, dtype=np.float16)[:, None]
    keys.flush()
    release_rows(keys, 0, n)  # written and flushed: the file holds them
    keys = np.load(tmp_path / "keys.npy", mmap_mode="r")
    before = _rss_file_kib()
    keys.astype(np.float32).sum()  # touch every page
    touched = _rss_file_kib()
    release_rows(keys[1000:], 0, n - 1000)  # a view: its own offsets
    release_rows(keys, 0, 1000)
    assert touched - before > 24 * 1024 and _rss_file_kib() - before < 4 * 1024
    np.testing.assert_array_equal(keys[:, 0], np.arange(n, dtype=np.float16))  # read back from the page cache
    cow = np.load(tmp_path / "keys.npy", mmap_mode="c")  # copy-on-write: its changes live only in its pages
    cow[0] = 7
    release_rows(cow, 0, n)
    assert (cow[0] == 7).all()
    release_rows(np.zeros((4, 4)), 0, 4)  # in RAM: nothing to do
