"""The bf16 versions of the CPU kernels against their unfused bf16 references.

Tolerances: bf16 keeps 8 significant bits, so one rounding step is 2**-8 (0.39 %) relative. The
fused head rounds each chunk's logits to bf16 exactly as the unfused bf16 head rounds its logits,
but takes the target logit in fp32 and sums in a different order: its loss is held to one
rounding step (rtol 2**-8; measured <= 4e-4) and the hidden-state gradient, itself returned in
bf16, to two steps of its largest entry (2**-7; measured <= 4e-3). Through a whole tiny model the
trainable weights' gradients pass that difference through further bf16 products of the backward:
four steps (2**-6; measured <= 8.5e-3). The dropout kernel rounds once,
as ``x * keep * scale`` in fp32 rounded to bf16 does: equal bit for bit.
"""

import pytest
import torch
import torch.nn.functional as F

from peftops.methods import get_method, make_config
from peftops.training.batching import IGNORE, _frozen_plain_head, build_batch, forward_logits, supervised_loss
from peftops.training.kernels import MaskDropout, head_cross_entropy
from peftops.training.precision import autocast, place_parameters
from tiny import tiny_model

LOSS_RTOL = 2.0 ** -8
GRAD_TOL = 2.0 ** -7
PARAM_GRAD_TOL = 2.0 ** -6


@pytest.mark.parametrize("vocab,chunk", [(1000, 128), (1000, 7), (4096, 512)])
def test_bf16_head_cross_entropy_matches_the_unfused_bf16_head(vocab, chunk):
    g = torch.Generator().manual_seed(vocab + chunk)
    weight = (torch.randn(vocab, 64, generator=g) * 0.3).bfloat16()
    hidden = torch.randn(8, 64, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (8,), generator=g)
    ref = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, hidden)
    got = head_cross_entropy(hidden, weight, targets, chunk=chunk)
    (got_grad,) = torch.autograd.grad(got, hidden)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16  # loss reduced in fp32
    torch.testing.assert_close(got, ref, rtol=LOSS_RTOL, atol=0)
    scale = float(ref_grad.float().abs().max())
    torch.testing.assert_close(got_grad.float(), ref_grad.float(), rtol=0, atol=GRAD_TOL * scale)


def test_bf16_mask_dropout_rounds_once_and_replays_its_mask():
    x = torch.randn(4, 9, 33).bfloat16().requires_grad_()
    drop = MaskDropout(0.3).train()
    torch.manual_seed(3)
    y = drop(x)
    assert y.dtype == torch.bfloat16
    keep = y != 0
    expected = (x.detach().float() * keep / 0.7).bfloat16()
    assert torch.equal(y.detach(), expected)
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert g.dtype == torch.bfloat16 and torch.equal(g, (keep.float() / 0.7).bfloat16())
    torch.manual_seed(3)
    assert torch.equal(drop(x).detach(), y.detach())  # same seed, same mask


@pytest.mark.parametrize("method,cfg", [("lora", {"dropout": 0.0}), ("prompt", {"num_virtual_tokens": 3})])
def test_bf16_supervised_loss_fused_matches_the_unfused_bf16_path(method, cfg):
    torch.manual_seed(0)
    model = place_parameters(get_method(method).apply(tiny_model(seed=5), make_config(method, cfg)), "bf16")
    model.train()
    inner = _frozen_plain_head(model)
    assert inner is not None and inner.lm_head.weight.dtype == torch.bfloat16
    batch = build_batch([[2, 10, 11, 12], [2, 20], [2, 30, 31]], [[40, 41], [42], [43, 44]], pad_id=0)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with autocast("cpu", "bf16"):
        logits = forward_logits(model, batch)
        assert logits.dtype == torch.bfloat16
        ref = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE,
                              reduction="sum")
    ref_grads = torch.autograd.grad(ref, [p for _, p in named])
    with autocast("cpu", "bf16"):
        got = supervised_loss(model, batch)
    got_grads = torch.autograd.grad(got, [p for _, p in named])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=LOSS_RTOL, atol=0)
    for (name, _), a, b in zip(named, got_grads, ref_grads):
        assert a.dtype == torch.float32, name  # trainable weights' gradients are fp32
        torch.testing.assert_close(a, b, rtol=0, atol=PARAM_GRAD_TOL * float(b.abs().max()) + 1e-6, msg=name)


def test_bf16_fused_loss_is_never_below_zero_when_the_target_dominates():
    """The target logit comes from the same rounded logits as the softmax: a confidently right
    row has a loss of ~0, not a negative one (a separately computed fp32 target logit can exceed
    the bf16-rounded logsumexp)."""
    from peftops.training.kernels import head_cross_entropy

    torch.manual_seed(0)
    weight = torch.randn(1024, 64).to(torch.bfloat16)
    targets = torch.randint(0, 1024, (32,))
    hidden = (weight[targets].float() * 8.0).to(torch.bfloat16)  # the target's logit dominates by far
    per_row = [float(head_cross_entropy(hidden[i:i + 1], weight, targets[i:i + 1], chunk=256)) for i in range(32)]
    assert min(per_row) >= 0.0
    assert max(per_row) < 1e-3
