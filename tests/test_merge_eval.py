"""Evaluation, metrics and merge parity on tiny models."""

import pytest
import torch

from peftops import stages as P
from peftops.errors import ParityError
from peftops.evaluation.evaluate import label_scores
from peftops.evaluation.merge import compare_logits
from peftops.evaluation.metrics import accuracy, f1, matthews
from tiny import tiny_model


def test_metrics_against_hand_computed_values():
    pred = [1, 1, 0, 0, 1, 0]
    gold = [1, 0, 0, 1, 1, 0]
    # tp=2 fp=1 fn=1 tn=2
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    assert f1(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews(pred, gold) == pytest.approx((2 * 2 - 1 * 1) / ((3 * 3 * 3 * 3) ** 0.5))
    assert matthews([1, 1], [1, 1]) == 0.0


def test_multi_token_label_scores_equal_a_manual_forward():
    model = tiny_model(seed=5)
    prompts = [[2, 11, 12], [2, 13]]
    labels = [[40, 41], [42]]
    scores = label_scores(model, prompts, labels, pad_id=0, device=torch.device("cpu"))
    for i, p in enumerate(prompts):
        for j, lab in enumerate(labels):
            seq = torch.tensor([p + lab])
            logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
            manual = sum(logp[len(p) - 1 + k, t] for k, t in enumerate(lab))
            assert scores[i, j].item() == pytest.approx(manual.item(), abs=1e-4)


def test_compare_logits():
    a = torch.tensor([[0.0, 1.0, 2.0]])
    assert compare_logits(a, a) == (0.0, 0.0)
    assert compare_logits(a, a + torch.tensor([[0.0, 0.0, 0.5]]))[0] == pytest.approx(0.5)


def test_lora_merge_parity_and_export_loads_as_plain_gemma(tiny_params, tiny_home, tmp_path):
    from transformers import AutoModelForCausalLM

    home, _ = tiny_home
    P.stage_prepare(tiny_params, home)
    P.stage_train(tiny_params, "lora", home, progress=False)
    cert = P.stage_merge(tiny_params, home, "lora", export_dir=tmp_path / "merged")
    assert cert.passed and cert.max_abs_dlogit < 1e-4 and cert.n_probes == 32
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "Gemma3ForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = P.load_adapted(P._snapshot(tiny_params, home), "lora", P.Layout.of(home).run("sst2", "lora") / "adapter",
                             torch.device("cpu"))
    x = torch.tensor([[2, 10, 11, 12]])
    torch.testing.assert_close(merged(input_ids=x).logits, adapted(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_classification_evaluation_and_merge_load_no_tokenizer(tiny_params, tiny_home, monkeypatch):
    """The splits are tokenized and the pad id is in the snapshot's config: scoring a
    classification task and certifying its merge never load the tokenizer (~3 s each on the
    real base); the scores are those the tokenizer's pad id gives."""
    import peftops.evaluation.merge as merge_mod
    import peftops.model.snapshot as snapshot_mod

    home, _ = tiny_home
    P.stage_prepare(tiny_params, home)
    P.stage_train(tiny_params, "lora", home, progress=False)
    assert P.pad_token_id(P._snapshot(tiny_params, home)) == snapshot_mod.load_tokenizer(
        P._snapshot(tiny_params, home)).pad_token_id

    def no_tokenizer(*_a, **_k):
        raise AssertionError("the tokenizer was loaded")

    for mod in (P, merge_mod, snapshot_mod):
        monkeypatch.setattr(mod, "load_tokenizer", no_tokenizer)
    assert 0.0 <= P.stage_evaluate(tiny_params, None, home).score <= 1.0
    assert P.stage_evaluate(tiny_params, "lora", home).score >= 0.0
    assert P.stage_merge(tiny_params, home, "lora").passed


def test_merge_refuses_above_tolerance(tiny_params, tiny_home, tmp_path):

    from peftops.config import MergeConfig

    home, _ = tiny_home
    P.stage_prepare(tiny_params, home)
    P.stage_train(tiny_params, "lora", home, progress=False)
    strict = tiny_params.model_copy(update={"merge": MergeConfig(tolerance=1e-30)})
    with pytest.raises(ParityError, match="tolerance"):
        P.stage_merge(strict, home, "lora", export_dir=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_evaluation_reflects_training(tmp_path):
    """A LoRA fitted to a learnable rule is scored perfect on it by the evaluator; the base is not."""
    from test_train import overfit_split

    from peftops.config import TrainConfig
    from peftops.evaluation.evaluate import evaluate
    from peftops.methods import get_method, make_config
    from peftops.training.loop import train

    split = overfit_split(16)
    base_score = evaluate(tiny_model(seed=0), split, pad_id=0).score
    method = get_method("lora")
    cfg = make_config("lora", {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0})
    model = method.apply(tiny_model(seed=0), cfg)
    train(model, method, cfg, split, TrainConfig(steps=30, batch_size=8, warmup_steps=1), tmp_path, pad_id=0,
          base_params=1, progress=False)
    result = evaluate(model, split, pad_id=0, batch_size=5)
    assert result.n == 16 and result.score == 1.0 > base_score
    assert result.predictions == split.labels
