"""The kNN-LM baseline reads a training run's datastore and gives normalised next-token distributions."""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files  # noqa: E402
from train_helpers import make_model, make_tokenizer, single_thread_fixture  # noqa: E402

from memreg.train import TrainConfig, TrainProgress, train  # noqa: E402

_one_thread = single_thread_fixture()


class _StopAtTrain(TrainProgress):
    def stage(self, name, *, total, unit, cached=False):
        if name == "train":
            raise KeyboardInterrupt


def test_knnlm_from_work_dir(tmp_path):
    from transformers import AutoTokenizer

    from memreg.evaluate import mixture_perplexity, perplexity, target_log_probs
    from memreg.knnlm import KNNLM

    make_tokenizer(tmp_path / "tok")
    teacher = make_model(tmp_path / "teacher", "gpt2", tokenizer_from=tmp_path / "tok", hidden=48)
    make_model(tmp_path / "init", "gpt2", tokenizer_from=tmp_path / "tok")
    cfg = TrainConfig(corpus=[str(p) for p in licence_files(["BSD", "Artistic"])], teacher=str(tmp_path / "teacher"),
                      init=str(tmp_path / "init"), out=tmp_path / "pkg", block_size=32, k=16, eval_fraction=0)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=_StopAtTrain())  # stages 1-4 are all a kNN-LM needs
    knn = KNNLM.from_work_dir(tmp_path / "pkg.work")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ids = torch.tensor([tok(licence_files(["BSD"])[0].read_text()[:200])["input_ids"]])
    lp = knn.log_probs(ids)
    assert lp.shape == (1, ids.shape[1], len(tok))
    np.testing.assert_allclose(lp.double().exp().sum(-1).numpy(), 1.0, atol=1e-5)
    # text from the datastore itself: the kNN-LM mixed with the teacher beats the teacher alone
    knn_lp = knn.target_log_probs(ids[0], context=32, stride=16)
    base_lp = target_log_probs(teacher.eval(), ids[0], context=32, stride=16)
    assert mixture_perplexity(base_lp, [knn_lp], [0.5]) < perplexity(base_lp)
