"""A bf16 run's merge folds in fp32 without building the fp32 base: the weights it exports are, bit
for bit, the fp32 fold rounded once (the fp32 base loaded, the adapter merged into it, every
parameter rounded to bf16), for LoRA, DoRA and BitFit; and no fp32 model is built on the way."""

import pytest
import torch
from safetensors.torch import load_file

from peftops import stages as P
from peftops.evaluation import merge as M
from peftops.methods import get_method
from peftops.model.snapshot import load_model

LORA = {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}
CASES = {  # case: (method, its params)
    "lora": ("lora", LORA),
    "dora": ("lora", {**LORA, "use_dora": True}),
    "bitfit": ("bitfit", {"lr": 2e-2, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "train_norms": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_merge_is_the_fp32_fold_rounded_once_without_an_fp32_model(case, tiny_params, tiny_home, tmp_path,
                                                                         monkeypatch):
    home, _ = tiny_home
    method, cfg = CASES[case]
    params = tiny_params.model_copy(update={
        "methods": {**tiny_params.methods, method: cfg},
        "train": tiny_params.train.model_copy(update={"precision": "bf16"})})
    P.stage_prepare(params, home)
    P.stage_train(params, method, home, progress=False)
    adapter = P.Layout.of(home).run("sst2", method) / "adapter"
    snap = P._snapshot(params, home)

    built = []
    monkeypatch.setattr(M, "load_model", lambda s, **kw: built.append(kw.get("dtype")) or load_model(s, **kw))
    cert = P.stage_merge(params, home, method, export_dir=tmp_path / "merged", export_dtype="bf16")
    assert cert.passed and cert.precision == "bf16"
    assert built == [torch.bfloat16]  # the adapter-applied bf16 model only: no fp32 base

    m = get_method(method)
    reference = m.merge(m.load(load_model(snap), adapter)).state_dict()  # folded in fp32
    exported = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert exported and {t.dtype for t in exported.values()} == {torch.bfloat16}
    base = load_model(snap, dtype=torch.bfloat16).state_dict()
    for name, tensor in exported.items():
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name
    # the adapter did change what it was merged into (LoRA: the weights; BitFit: the new biases)
    assert any(name not in base or not torch.equal(t, base[name]) for name, t in exported.items())


def test_a_method_without_fold_targets_still_folds_into_the_fp32_base(tiny_params, tiny_home, tmp_path, monkeypatch):
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"precision": "bf16"})})
    P.stage_prepare(params, home)
    P.stage_train(params, "lora", home, progress=False)
    monkeypatch.delattr(type(get_method("lora")), "fold_targets")
    built = []
    monkeypatch.setattr(M, "load_model", lambda s, **kw: built.append(kw.get("dtype")) or load_model(s, **kw))
    cert = P.stage_merge(params, home, "lora")
    assert cert.passed and cert.precision == "bf16"
    assert built == [torch.bfloat16, None]  # the adapter-applied model, then the fp32 base (the default dtype)
