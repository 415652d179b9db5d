"""Two CPU training kernels written with plain torch ops: a cheaper dropout mask and a
single-pass cross-entropy through a frozen LM head.

Both exist because a profile of a Gemma 3 270M LoRA step on CPU (``bench/train_probe.py``)
spent 8 % of its time in ``bernoulli_`` (dropout masks, drawn twice per step when activations
are recomputed), and the LM head's two matrix products each stream the whole 262,144 x 640 fp32
embedding (671 MB) from memory: ~0.2 s of a ~2 s step. ``bench/kernels_bench.py`` times both
against the stock ops. On CUDA both fall back to the stock ops,
which are fused kernels there already. Both run in fp32 and in bf16 (see
``peftops.training.precision``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Vocabulary rows per chunk of the fused head: 512 x 640 x 4 B = 1.3 MB, which stays in cache
# between the chunk's two products (`bench/kernels_bench.py --chunks 512,2048,8192`, 8 rows,
# forward + backward: 152, 148 and 204 ms, against 212 ms for the unfused pair).
HEAD_CHUNK = 512


# ---------------------------------------------------------------- dropout


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor, True with probability 1 - p, drawn from torch's default generator.

    Four 16-bit lanes come out of each 64-bit draw, where ``bernoulli_`` spends one draw and a
    float comparison per element: a quarter of the draws. The drop probability is therefore
    rounded to a multiple of 2**-16 (0.05 -> 0.0500030). The generator is torch's global one,
    so ``torch.manual_seed``, checkpoint resumption and activation recomputation (which replays
    the RNG state) reproduce the same masks.
    """
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    bits.random_(-(2**63), None)  # every bit uniform: the full 64-bit range
    lanes = bits.view(torch.int16)[:n].view(shape)
    return lanes >= -32768 + round(p * 65536)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep / (1 - p); saves the 1-byte mask, not a float copy of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.mul(x, keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None


class MaskDropout(torch.nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask of :func:`keep_mask` (the stock op on CUDA).

    A subclass, so code that inspects dropout modules (peft does) and ``repr`` see a Dropout;
    evaluation mode and p = 0 are the identity, as for ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True, self.inplace)
        return _MaskedScale.apply(x, self.p)


def replace_dropouts(module: torch.nn.Module, name_filter: str = "") -> int:
    """Swap every plain ``nn.Dropout`` under ``module`` whose qualified name contains
    ``name_filter`` for a :class:`MaskDropout` of the same p; returns how many were swapped."""
    swapped = 0
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            qual = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is torch.nn.Dropout and name_filter in qual:
                setattr(parent, child_name, MaskDropout(child.p))
                swapped += 1
    return swapped


# ---------------------------------------------------------------- fused LM head + cross-entropy


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``hidden @ weight.T`` against ``targets``, in one pass over the
    vocabulary, with the gradient for ``hidden`` formed during that pass.

    An online softmax (running max, running sum, running softmax-weighted sum of weight rows)
    visits each chunk of the weight once: the chunk's logits and its share of
    d loss / d hidden = softmax @ weight - weight[target] are computed while the chunk is in
    cache. The unfused pair reads the whole weight twice (logits forward, hidden-gradient
    backward) and materialises rows x vocab logits, their log-softmax and their gradient. The
    weight must be frozen: its gradient is not computed.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        # The products run in the weight's dtype (bf16 for a bf16 run: the chunk's logits come out
        # rounded to bf16, as the unfused bf16 head's do); the running max, sum and the
        # softmax-weighted sum of rows are fp32, so the loss is reduced in fp32 either way.
        rows = hidden.shape[0]
        want_grad = ctx.needs_input_grad[0]
        ctx.hidden_dtype = hidden.dtype
        h = hidden.to(weight.dtype)
        run_max = torch.full((rows,), float("-inf"), device=hidden.device)
        run_sum = torch.zeros(rows, device=hidden.device)
        acc = torch.zeros(hidden.shape, device=hidden.device) if want_grad else None
        low = weight.dtype != torch.float32
        # Each row's target logit is taken from the same (rounded) chunk logits the softmax sees, so
        # loss = logsumexp - target logit is never below zero by a rounding of the logits.
        target_logit = torch.zeros(rows, device=hidden.device)
        for start in range(0, weight.shape[0], chunk):
            w = weight[start:start + chunk]
            z = (h @ w.T).float()
            here = ((targets >= start) & (targets < start + w.shape[0])).nonzero(as_tuple=True)[0]
            if here.numel():
                target_logit[here] = z[here, targets[here] - start]
            new_max = torch.maximum(run_max, z.amax(dim=1))
            rescale = torch.exp(run_max - new_max)
            z.sub_(new_max[:, None]).exp_()
            run_sum.mul_(rescale).add_(z.sum(dim=1))
            if acc is not None:
                acc.mul_(rescale[:, None])
                if low:
                    acc.add_(z.to(weight.dtype) @ w)
                else:
                    acc.addmm_(z, w)
            run_max = new_max
        w_target = weight[targets].float()
        loss = run_max + torch.log(run_sum) - target_logit
        if acc is not None:
            ctx.save_for_backward(acc.div_(run_sum[:, None]).sub_(w_target))
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return (grad.float()[:, None] * grad_hidden).to(ctx.hidden_dtype), None, None, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """Summed cross-entropy of the logits ``hidden @ weight.T`` (rows x vocab, never formed)
    against ``targets`` (one id per row), for a frozen ``weight``.

    The products run in the weight's dtype (fp32 or bf16: a bf16 head is read as it is stored,
    half the bytes, never copied to fp32), the softmax statistics and the loss in fp32; the
    gradient for ``hidden`` comes back in ``hidden``'s dtype. Autocast is switched off inside:
    the dtypes are chosen here.
    """
    if weight.requires_grad:
        raise ValueError("head_cross_entropy computes no gradient for the head weight; "
                         "use F.cross_entropy on the logits when the head is trained")
    if weight.dtype not in (torch.float32, torch.bfloat16):
        weight = weight.float()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _HeadCrossEntropy.apply(hidden, weight, targets, chunk).sum()
