"""The evaluation hands the merge certificate the adapter-applied probe logits it computed with the
certificate's own batches: bit for bit what the merge computes itself, so the certificate is the
same either way; never across a changed adapter; once only."""

import pytest
import torch

from peftops import stages as P
from peftops.evaluation import merge as M
from peftops.evaluation.evaluate import evaluate
from peftops.data.prepared import load_prepared


# The tiny SST-2-shaped task with verbalizers that are one token in the tiny tokenizer (as the
# GLUE tasks' are in Gemma's): only then does one forward pass score a prompt.
MANIFEST = """tasks:
  sst2one:
    description: tiny sentiment, one-token verbalizers
    format: tsv
    header: true
    train: glue/SST-2/train.tsv
    dev: glue/SST-2/dev.tsv
    fields: {sentence: sentence}
    label_field: label
    template: "Review: {sentence}\\nSentiment:"
    labels: {"0": " bad", "1": " good"}
    metric: accuracy
"""
TASK = "sst2one"


def _trained(tiny_params, tiny_home, precision, tmp_path):
    home, _ = tiny_home
    (tmp_path / "tasks.yaml").write_text(MANIFEST)
    params = tiny_params.model_copy(update={
        "train": tiny_params.train.model_copy(update={"precision": precision}),
        "data": tiny_params.data.model_copy(update={"task": TASK, "manifest": str(tmp_path / "tasks.yaml")})})
    P.stage_prepare(params, home)
    P.stage_train(params, "lora", home, progress=False)
    return params, home


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_certificate_is_the_same_whether_the_evaluation_or_the_merge_computed_the_adapter_side(
        precision, tiny_params, tiny_home, tmp_path, monkeypatch):
    params, home = _trained(tiny_params, tiny_home, precision, tmp_path)
    M._ADAPTER_LOGITS.clear()
    P.stage_evaluate(params, "lora", home)
    assert len(M._ADAPTER_LOGITS) == 1
    (kept,) = M._ADAPTER_LOGITS.values()

    calls = []
    real = M.last_logits
    monkeypatch.setattr(M, "last_logits", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    reused = P.stage_merge(params, home, "lora")
    assert reused.adapter_logits_from == "evaluation" and len(calls) == 1  # the merged side only
    assert not M._ADAPTER_LOGITS  # taken once

    computed = P.stage_merge(params, home, "lora")  # nothing left: the merge computes both sides
    assert computed.adapter_logits_from == "merge" and len(calls) == 3
    assert reused.passed and computed.passed
    assert (reused.max_abs_dlogit, reused.mean_kl) == (computed.max_abs_dlogit, computed.mean_kl)

    snap = P._snapshot(params, home)
    adapted = P.load_adapted(snap, "lora", P.Layout.of(home).run(TASK, "lora") / "adapter",
                             torch.device("cpu"), precision)
    dev = load_prepared(P.Layout.of(home).data(TASK) / "dev.json")
    fresh = real(adapted, dev.input_ids[:params.merge.probe_size], P.pad_token_id(snap), precision=precision)
    assert kept.shape == fresh.shape and torch.equal(kept, fresh)


def test_a_changed_adapter_is_never_certified_with_the_old_ones_logits(tiny_params, tiny_home, tmp_path):
    params, home = _trained(tiny_params, tiny_home, "fp32", tmp_path)
    M._ADAPTER_LOGITS.clear()
    P.stage_evaluate(params, "lora", home)
    retrained = params.model_copy(update={"train": params.train.model_copy(update={"seed": params.train.seed + 1})})
    P.stage_train(retrained, "lora", home, progress=False)  # same run directory, new weights
    cert = P.stage_merge(retrained, home, "lora")
    assert cert.passed and cert.adapter_logits_from == "merge"


def test_batching_the_probes_apart_leaves_the_scores_unchanged(tiny_params, tiny_home, tmp_path):
    params, home = _trained(tiny_params, tiny_home, "fp32", tmp_path)
    snap = P._snapshot(params, home)
    model = P.load_adapted(snap, "lora", P.Layout.of(home).run(TASK, "lora") / "adapter", torch.device("cpu"))
    dev = load_prepared(P.Layout.of(home).data(TASK) / "dev.json")
    plain = evaluate(model, dev, pad_id=P.pad_token_id(snap), batch_size=4)
    split = evaluate(model, dev, pad_id=P.pad_token_id(snap), batch_size=4, probe_rows=10)
    assert plain.probe_logits is None and split.probe_logits.shape[0] == 10
    assert split.predictions == plain.predictions and split.metrics == plain.metrics
