"""peftops' fused LoRA forward against peft's own, on a tiny Gemma 3 built in code.

Tolerances: in fp32 the two compute the same sum in a different order (scaling on B rather than on
the product, the base output added inside the product): 1e-5. In bf16 (base in bf16, LoRA in fp32,
under autocast, as training runs) the stock forward rounds the LoRA product and the sum to bf16
separately, the fused one rounds once, and through a network the two roundings drift apart by about
as much as either drifts from exact arithmetic (~1 % of the largest logit here). So the bf16 check is
against exact arithmetic, the same model in fp32: the fused forward must be no less accurate than
peft's own bf16 forward (mean logit error and gradient error within 25 % of peft's).
"""

import copy

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from peftops.methods import get_method, make_config
from peftops.methods.lora.fused import fuse_lora_linears
from tiny import tiny_model

BF16_STEP = 2.0 ** -8


def _pair(dtype, **lora):
    """(stock, fused): the same tiny model with the same LoRA weights, peft's forward and peftops'."""
    torch.manual_seed(0)
    base = tiny_model(layers=2)
    if dtype == torch.bfloat16:  # training's layout: frozen base in bf16, LoRA weights in fp32
        base = base.to(torch.bfloat16)
    cfg = make_config("lora", {"r": 4, "alpha": 8, "dropout": 0.1, **lora})
    fused = get_method("lora").apply(base, cfg)
    for name, p in fused.named_parameters():
        if "lora_" in name:
            p.data = (torch.randn_like(p, dtype=torch.float32) * 0.3)  # B is zero at init: give it values
    stock = copy.deepcopy(fused)
    for m in stock.modules():
        if isinstance(m, PeftLoraLinear):
            m.__class__ = PeftLoraLinear
    return stock, fused


def _run(model, ids, dtype, train):
    model.train(train)
    torch.manual_seed(7)  # the same dropout masks in both
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = model(input_ids=ids).logits.float()
    loss = logits.square().mean()
    grads = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if p.requires_grad])
    return logits.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_fused_lora_matches_peft_outputs_and_gradients(dtype, train):
    stock, fused = _pair(dtype)
    assert sum(type(m).__name__ == "FusedLoraLinear" for m in fused.modules()) == 2 * 7  # q k v o gate up down
    ids = torch.randint(0, 160, (3, 9), generator=torch.Generator().manual_seed(1))
    exact = copy.deepcopy(stock).float()  # bf16 weights are exact in fp32
    y_ref, g_ref = _run(stock, ids, dtype, train)
    y, g = _run(fused, ids, dtype, train)
    assert len(g) == len(g_ref) == 2 * 2 * 7
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
        return
    assert all(a.dtype == torch.float32 for a in g)  # trainable weights and their gradients stay fp32
    y_true, g_true = _run(exact, ids, torch.float32, train)

    def grad_error(grads):
        return sum(float((a - t).norm()) for a, t in zip(grads, g_true)) / sum(float(t.norm()) for t in g_true)

    assert float((y - y_true).abs().mean()) <= 1.25 * float((y_ref - y_true).abs().mean())
    assert grad_error(g) <= 1.25 * grad_error(g_ref)
    assert float((y - y_true).abs().mean()) < 4 * BF16_STEP  # and bf16 is close to exact at all


def test_fusing_keeps_weights_saving_and_merge(tmp_path):
    stock, fused = _pair(torch.float32)
    assert fuse_lora_linears(fused) == 0  # idempotent: apply() fused them already
    assert list(fused.state_dict()) == list(stock.state_dict())
    assert all(isinstance(m, PeftLoraLinear) for m in fused.modules() if type(m).__name__ == "FusedLoraLinear")
    ids = torch.randint(0, 160, (2, 6), generator=torch.Generator().manual_seed(2))
    method = get_method("lora")
    method.save(fused, make_config("lora", {"r": 4, "alpha": 8}), tmp_path)
    loaded = method.load(tiny_model(layers=2), tmp_path)  # load fuses too: evaluation sees training's forward
    assert sum(type(m).__name__ == "FusedLoraLinear" for m in loaded.modules()) == 2 * 7
    with torch.no_grad():
        before = fused.eval()(input_ids=ids).logits
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
        merged = method.merge(copy.deepcopy(fused))
        assert not any(isinstance(m, PeftLoraLinear) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["dora", "disabled", "fp32_input_to_bf16_lora"])
def test_what_fusing_does_not_cover_takes_peft_forward_exactly(case):
    stock, fused = _pair(torch.float32, **({"use_dora": True} if case == "dora" else {}))
    ids = torch.randint(0, 160, (2, 6), generator=torch.Generator().manual_seed(3))
    if case == "fp32_input_to_bf16_lora":  # no autocast, dtypes differ: peft casts the input, so must we
        for model in (stock, fused):
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.data = p.data.to(torch.bfloat16)
    with torch.no_grad():
        if case == "disabled":
            with stock.disable_adapter(), fused.disable_adapter():
                assert torch.equal(fused.eval()(input_ids=ids).logits, stock.eval()(input_ids=ids).logits)
        else:
            assert torch.equal(fused.eval()(input_ids=ids).logits, stock.eval()(input_ids=ids).logits)
