"""Training: beta = 1 lowers KL(p_kNN || p_mem); checkpoints resume to the same weights; on one
process the loop (through accelerate) is the plain torch loop, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files  # noqa: E402
from train_helpers import make_model, make_tokenizer, single_thread_fixture  # noqa: E402

from memreg.train.corpus import Document, TokenArray, write_tokens  # noqa: E402
from memreg.train.datastore import build_datastore, open_datastore  # noqa: E402
from memreg.train.index import build_index, load_index  # noqa: E402
from memreg.train.knn import build_targets, open_targets  # noqa: E402
from memreg.train.loss import memdec_loss  # noqa: E402
from memreg.train.trainer import BlockBatches, latest_checkpoint, make_optimizer, schedule, train_loop  # noqa: E402

BLOCK = 32

_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("prep")
    make_tokenizer(root / "tok")
    teacher = make_model(root / "teacher", "gpt2", tokenizer_from=root / "tok", hidden=48, seed=1).eval()
    make_model(root / "init", "gpt2", tokenizer_from=root / "tok", seed=2)
    tok = AutoTokenizer.from_pretrained(root / "tok")
    docs = [Document(p.name, p.read_text()) for p in licence_files(["BSD", "Artistic"])]
    write_tokens(root, "train", docs, lambda t: tok(t)["input_ids"], tok.eos_token_id)
    tokens = TokenArray(root, "train")
    build_datastore(teacher, tokens, root, block_size=BLOCK, batch_size=8)
    keys, values = open_datastore(root)
    build_index(keys, "Flat", root / "index.faiss")
    build_targets(load_index(root / "index.faiss"), keys, values, root, k=32, temperature=5.0,
                  vocab_size=len(tok), support=16, batch_size=512)
    return root, tokens, len(tok)


def _batches(prepared, batch_size=4):
    root, tokens, _ = prepared
    return BlockBatches(tokens, *open_targets(root), block_size=BLOCK, batch_size=batch_size, seed=0)


def _mean_kl(model, batches, vocab) -> float:
    model.eval()
    with torch.no_grad():
        kls = [memdec_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"],
                           b["knn_ids"], b["knn_probs"], beta=1.0, vocab_size=vocab).kl.item()
               for b in (batches(m) for m in range(batches.micro_per_epoch))]
    return float(np.mean(kls))


def _init(prepared):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(prepared[0] / "init")


@pytest.mark.slow  # trains until the loss moves
def test_beta_one_lowers_kl(prepared, tmp_path):
    batches, vocab = _batches(prepared), prepared[2]
    model = _init(prepared)
    before = _mean_kl(model, batches, vocab)
    sched = schedule(len(batches.spans), batch_size=4, grad_accum=1, steps=150, epochs=None, warmup_fraction=0.05)
    train_loop(model, batches, tmp_path / "ck", sched=sched, lr=5e-3, weight_decay=0.0, beta=1.0, grad_accum=1,
               vocab_size=vocab, seed=0, checkpoint_every=1000)
    after = _mean_kl(model, batches, vocab)
    assert after < 0.7 * before, (before, after)
    print(f"KL {before:.3f} -> {after:.3f}")


class _Crash(Exception):
    pass


def test_resume_after_crash_gives_the_same_weights(prepared, tmp_path):
    batches, vocab = _batches(prepared), prepared[2]
    sched = schedule(len(batches.spans), batch_size=4, grad_accum=2, steps=9, epochs=None, warmup_fraction=0.2)
    kw = dict(sched=sched, lr=1e-3, weight_decay=0.01, beta=0.5, grad_accum=2, vocab_size=vocab, seed=3,
              checkpoint_every=4)
    straight = _init(prepared)
    train_loop(straight, batches, tmp_path / "a", **kw)

    def crash_at_6(step, total, metrics):
        if step == 6:
            raise _Crash

    with pytest.raises(_Crash):
        train_loop(_init(prepared), batches, tmp_path / "b", on_step=crash_at_6, **kw)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000004"
    resumed = _init(prepared)  # a fresh process would start from the init weights too
    train_loop(resumed, batches, tmp_path / "b", **kw)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_one_process_trains_exactly_as_the_plain_torch_loop(prepared, tmp_path):
    """accelerate on one process adds nothing: AdamW with the warm-up/decay schedule, each micro-batch's
    loss divided by grad_accum, gradients clipped to norm 1, dropout drawn from the seeded generator."""
    batches, vocab = _batches(prepared, batch_size=2), prepared[2]
    sched = schedule(len(batches.spans), batch_size=2, grad_accum=3, steps=4, epochs=None, warmup_fraction=0.25)
    hyper = dict(lr=2e-3, weight_decay=0.01)
    model = _init(prepared)
    out = train_loop(model, batches, tmp_path / "ck", sched=sched, beta=0.5, grad_accum=3, vocab_size=vocab, seed=5,
                     checkpoint_every=100, **hyper)

    plain = _init(prepared)
    torch.manual_seed(5)
    plain.train()
    opt, lr_sched = make_optimizer(plain, sched=sched, **hyper)
    for step in range(4):
        ce = 0.0
        for micro in range(3):
            b = batches(step * 3 + micro)
            logits = plain(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            parts = memdec_loss(logits, b["labels"], b["knn_ids"], b["knn_probs"], beta=0.5, vocab_size=vocab)
            (parts.loss / 3).backward()
            ce += float(parts.ce.detach()) / 3
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert out.metrics["ce"] == ce  # the last step's mean over its micro-batches
