"""A warm worker keeps the base in memory between tasks: the same weights, a fresh model each
time (training one task's copy leaves the next task's untouched), the tokenizer loaded once."""

import torch


def _counting_loads(monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *a, **k):
        calls.append(a)
        return real(cls, *a, **k)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    return calls


def test_a_warm_worker_serves_fresh_models_from_memory(tiny_home, monkeypatch):
    from peftops.model import snapshot as S

    home, _ = tiny_home
    snap = S.open_snapshot(S.snapshot_dir("gemma-3-270m", home))
    monkeypatch.setenv("PEFTOPS_WARM_BASE", "1")
    monkeypatch.setattr(S, "_WARM_MODELS", {})
    monkeypatch.setattr(S, "_WARM_TOKENIZERS", {})
    calls = _counting_loads(monkeypatch)
    first = S.load_model(snap)
    second = S.load_model(snap)
    assert len(calls) == 1  # the second came from memory
    ids = torch.tensor([[2, 10, 11, 12]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
        reference = first(ids).logits
        for p in second.parameters():
            p.add_(1.0)  # a task changes its copy ...
        assert torch.equal(S.load_model(snap)(ids).logits, reference)  # ... the next task's is untouched
    assert second.lm_head.weight.data_ptr() == second.model.embed_tokens.weight.data_ptr()  # still tied
    assert S.load_tokenizer(snap) is S.load_tokenizer(snap)


def test_a_one_shot_process_keeps_nothing(tiny_home, monkeypatch):
    from peftops.model import snapshot as S

    home, _ = tiny_home
    snap = S.open_snapshot(S.snapshot_dir("gemma-3-270m", home))
    monkeypatch.delenv("PEFTOPS_WARM_BASE", raising=False)
    monkeypatch.setattr(S, "_WARM_MODELS", {})
    calls = _counting_loads(monkeypatch)
    S.load_model(snap)
    S.load_model(snap)
    assert len(calls) == 2 and S._WARM_MODELS == {}
    assert S.load_tokenizer(snap) is not S.load_tokenizer(snap)


def test_the_base_evaluation_runs_on_the_warm_model_itself_and_leaves_it_as_it_was(
        tiny_home, tiny_params, monkeypatch):
    """The base's evaluation only runs the model forward: a warm worker lends it the warm model
    (no copy) and the next task's copy is still the base; the scores are those of a cold load."""
    from peftops import stages
    from peftops.model import snapshot as S

    home, _ = tiny_home
    stages.stage_prepare(tiny_params, home)
    monkeypatch.delenv("PEFTOPS_WARM_BASE", raising=False)
    cold = stages.stage_evaluate(tiny_params, None, home)

    monkeypatch.setenv("PEFTOPS_WARM_BASE", "1")
    monkeypatch.setattr(S, "_WARM_MODELS", {})
    copies = []
    real_deepcopy = S.copy.deepcopy
    monkeypatch.setattr(S.copy, "deepcopy", lambda x, *a: (
        copies.append(x) if isinstance(x, torch.nn.Module) else None) or real_deepcopy(x, *a))
    warm = stages.stage_evaluate(tiny_params, None, home)
    again = stages.stage_evaluate(tiny_params, None, home)
    assert copies == []  # lent, not copied (a model copy, that is: loading copies its config)
    (model,) = S._WARM_MODELS.values()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert warm.predictions == again.predictions == cold.predictions and warm.metrics == cold.metrics
    fresh = S.load_model(S.open_snapshot(S.snapshot_dir("gemma-3-270m", home)))  # a training's copy
    assert len(copies) == 1 and fresh is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
