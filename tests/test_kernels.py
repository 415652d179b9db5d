"""The CPU kernels: the dropout mask's distribution and replay, and the fused head loss against
the unfused reference (values and gradients), on random tensors and on a tiny Gemma 3."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from peftops.training.batching import IGNORE, _frozen_plain_head, build_batch, forward_logits, supervised_loss
from peftops.training.kernels import MaskDropout, head_cross_entropy, keep_mask, replace_dropouts
from peftops.methods import get_method, make_config
from tiny import tiny_model


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_mask_has_the_asked_rate_in_every_lane(p):
    torch.manual_seed(0)
    n = 400_000
    keep = keep_mask(torch.Size([n]), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    # Each of the four 16-bit lanes of a 64-bit draw (also the top one, whose sign bit must be
    # random too) keeps with probability 1 - p: 6 standard deviations of a binomial.
    for lane in range(4):
        k = keep.view(-1, 4)[:, lane].float()
        tol = 6 * (p * (1 - p) / k.numel()) ** 0.5
        assert abs(float(k.mean()) - (1 - p)) < tol, (lane, float(k.mean()))
    # Neighbouring elements are independent (the pair rate is the product).
    pairs = (keep[0::2] & keep[1::2]).float().mean()
    assert abs(float(pairs) - (1 - p) ** 2) < 6 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / (n / 2)) ** 0.5


def test_keep_mask_follows_the_global_seed_and_odd_sizes():
    torch.manual_seed(7)
    a = keep_mask(torch.Size([3, 5, 7]), 0.3)
    torch.manual_seed(7)
    b = keep_mask(torch.Size([3, 5, 7]), 0.3)
    assert a.shape == (3, 5, 7) and torch.equal(a, b)
    assert not torch.equal(a, keep_mask(torch.Size([3, 5, 7]), 0.3))  # the generator moved on


def test_mask_dropout_scales_kept_values_and_its_gradient():
    torch.manual_seed(1)
    drop = MaskDropout(0.25)
    x = torch.randn(64, 33, requires_grad=True)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.6 < float(kept.float().mean()) < 0.9
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert drop.eval()(x) is x
    assert MaskDropout(0.0).train()(x) is x
    assert isinstance(drop, torch.nn.Dropout)


def test_mask_dropout_replays_under_activation_recomputation():
    lin = torch.nn.Linear(16, 16)
    drop = MaskDropout(0.3)
    x = torch.randn(8, 16, requires_grad=True)

    def block(t):
        return lin(drop(t)).tanh()

    torch.manual_seed(3)
    block(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(3)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(x.grad, plain, rtol=0, atol=0)


def test_replace_dropouts_swaps_only_matching_plain_dropouts():
    m = torch.nn.Sequential()
    m.add_module("lora_dropout", torch.nn.ModuleDict({"default": torch.nn.Dropout(0.1)}))
    m.add_module("other", torch.nn.Dropout(0.2))
    assert replace_dropouts(m, "lora_dropout") == 1
    assert type(m.lora_dropout["default"]) is MaskDropout and m.lora_dropout["default"].p == 0.1
    assert type(m.other) is torch.nn.Dropout


@pytest.mark.parametrize("vocab,chunk", [(1000, 128), (1000, 7), (1000, 1000), (1000, 4096), (37, 1)])
def test_head_cross_entropy_matches_the_unfused_loss_and_gradient(vocab, chunk):
    g = torch.Generator().manual_seed(vocab + chunk)
    weight = torch.randn(vocab, 24, generator=g)
    hidden = torch.randn(6, 24, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (6,), generator=g)
    ref = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, hidden)
    got = head_cross_entropy(hidden, weight, targets, chunk=chunk)
    (got_grad,) = torch.autograd.grad(got, hidden)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_head_cross_entropy_is_stable_for_huge_logits_and_refuses_a_trained_head():
    weight = torch.randn(300, 8) * 50
    hidden = torch.randn(4, 8) * 50  # logits in the thousands: exp overflows without a max
    targets = torch.tensor([0, 5, 299, 17])
    got = head_cross_entropy(hidden, weight, targets, chunk=64)
    ref = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
    with torch.no_grad():  # no gradient wanted: the loss alone
        torch.testing.assert_close(head_cross_entropy(hidden, weight, targets), ref, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="no gradient for the head weight"):
        head_cross_entropy(hidden, weight.requires_grad_(), targets)


def _batch():
    return build_batch([[2, 10, 11, 12], [2, 20], [2, 30, 31]], [[40, 41], [42], [43, 44]], pad_id=0)


def _reference_loss(model, batch):
    logits = forward_logits(model, batch)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("method,cfg", [("lora", {"dropout": 0.0}), ("prompt", {"num_virtual_tokens": 3}),
                                        ("full", {})])
def test_supervised_loss_equals_logits_then_cross_entropy(method, cfg):
    torch.manual_seed(0)
    model = get_method(method).apply(tiny_model(seed=5), make_config(method, cfg))
    model.train()
    assert (_frozen_plain_head(model) is None) == (method == "full")  # fused unless the head trains
    batch = _batch()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ref = _reference_loss(model, batch)
    ref_grads = torch.autograd.grad(ref, [p for _, p in named], allow_unused=True)
    got = supervised_loss(model, batch)
    got_grads = torch.autograd.grad(got, [p for _, p in named], allow_unused=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(named, got_grads, ref_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).lm_head
    assert type(head) is torch.nn.Linear  # the head is back in place after the fused forward
