"""Gemma's fused RMSNorm against transformers' module, and the exact peak-memory meter.

Tolerances: in fp32 the fused norm does the module's arithmetic in a different order (one
rsqrt per row, the backward formed analytically rather than by autograd's graph): 1e-5 relative
on the gradients (measured <= 5e-7 absolute on unit-scale values). In bf16 both round the output
once from the same fp32 values, so the outputs are equal; the input gradient is rounded to bf16
from fp32 values that differ only in summation order: one bf16 step (2**-8) of its largest entry.
"""

import copy

import numpy as np
import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from peftops.training.kernels import fuse_rms_norms, gemma_rms_norm
from peftops.training.memory import PeakMemory
from tiny import tiny_model

BF16_STEP = 2.0 ** -8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 4, 5, 16)])  # hidden states; per-head q/k norms
@pytest.mark.parametrize("trained_weight", [False, True])
def test_fused_rms_norm_matches_gemma3s_module(dtype, shape, trained_weight):
    g = torch.Generator().manual_seed(sum(shape))
    ref = Gemma3RMSNorm(shape[-1], eps=1e-6)
    ref.weight.data = (torch.randn(shape[-1], generator=g) * 0.2).to(torch.float32 if trained_weight else dtype)
    ref.weight.requires_grad_(trained_weight)
    x = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_()
    gy = torch.randn(shape, generator=g).to(dtype)

    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref, [x, ref.weight] if trained_weight else [x], gy)
    y = gemma_rms_norm(x, ref.weight, ref.eps)
    grads = torch.autograd.grad(y, [x, ref.weight] if trained_weight else [x], gy)

    assert y.dtype == dtype and grads[0].dtype == dtype
    if dtype == torch.bfloat16:
        assert torch.equal(y, y_ref)
        scale = float(grads_ref[0].float().abs().max())
        torch.testing.assert_close(grads[0].float(), grads_ref[0].float(), rtol=0, atol=BF16_STEP * scale)
    else:
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grads[0], grads_ref[0], rtol=1e-5, atol=1e-5)
    if trained_weight:  # LayerNorm tuning trains the norm's weight: its gradient is formed too
        assert grads[1].dtype == torch.float32
        torch.testing.assert_close(grads[1], grads_ref[1], rtol=1e-4, atol=1e-4 * float(grads_ref[1].abs().max()))


def test_fuse_rms_norms_keeps_the_model_its_weights_and_its_outputs():
    model = tiny_model(layers=2)
    ids = torch.randint(0, 160, (2, 7), generator=torch.Generator().manual_seed(1))
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    n = sum(isinstance(m, Gemma3RMSNorm) for m in model.modules())
    assert n == 2 * 6 + 1  # per layer: 4 around attention and MLP, q and k norms; the final norm
    assert fuse_rms_norms(model) == n and fuse_rms_norms(model) == 0  # idempotent
    assert all(isinstance(m, Gemma3RMSNorm) for m in model.modules() if "norm" in type(m).__name__.lower())
    assert list(model.state_dict()) == keys
    assert type(model.model.norm).__name__ == "FusedGemma3RMSNorm"
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    model.train(), plain.train()
    model(input_ids=ids).logits.square().mean().backward()
    plain(input_ids=ids).logits.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fuse_rms_norms(copy.deepcopy(model)) == 0  # a copy (the warm base) keeps the fused class


def test_peak_memory_sees_a_short_spike_and_nests():
    mb = 2 ** 20
    with PeakMemory() as outer:
        spike = np.ones(96 * mb // 8)  # 96 MB touched then freed: a sampler could miss it
        del spike
        with PeakMemory() as inner:
            small = np.ones(24 * mb // 8)
            del small
        after_inner = outer.peak_bytes
    assert outer.method in ("hwm", "sampled")
    assert outer.peak_bytes >= after_inner
    if outer.method == "hwm":  # exact: the kernel's high-water mark, reset per context
        assert outer.peak_bytes - inner.peak_bytes > 60 * mb  # the inner one does not inherit the spike
        assert inner.peak_mb > 0
