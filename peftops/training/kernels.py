"""Three CPU training kernels written with plain torch ops: a cheaper dropout mask, a
single-pass cross-entropy through a frozen LM head, and Gemma's RMSNorm with a hand-written
backward.

They exist because profiles of a Gemma 3 270M LoRA step on CPU (``bench/train_probe.py``) spent
8 % of the fp32 step in ``bernoulli_`` (dropout masks, drawn twice per step when activations are
recomputed); the LM head's two matrix products each stream the whole 262,144 x 640 fp32
embedding (671 MB) from memory (~0.2 s of a ~2 s step); and, once bf16 made the products cheap,
``aten::mul`` took 20 % of a bf16 step's self time and ``PowBackward`` 5 % more
(``bench/train_probe.py --precision bf16 --steps 4``), mostly in the element-wise graph of 109
RMSNorms (an fp32 copy, pow, mean, rsqrt, two products and a cast forward; autograd's dozen ops
backward) and in multiplying by a bool mask, which torch does element by element.
``bench/kernels_bench.py`` times each against the stock ops. On CUDA the dropout and
the head fall back to the stock ops, which are fused kernels there already. All run in fp32 and
in bf16 (see ``peftops.training.precision``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# Vocabulary rows per chunk of the fused head: 2048 x 640 = 5.2 MB in fp32, 2.6 MB in bf16, which
# stays in cache between the chunk's two products. `bench/kernels_bench.py --chunks ...`, 8 rows,
# forward + backward, one thread: fp32 144 / 141 / 143 ms at 512 / 2048 / 4096 rows (stock pair
# 171-183 ms); bf16 81 / 65 / 55-58 / 56 ms at 512 / 1024 / 2048 / 4096 (stock pair 71-78 ms):
# small bf16 chunks pay more in per-chunk calls than they save in cache.
HEAD_CHUNK = 2048


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
    """y = x * keep / (1 - p); saves the 1-byte mask, not a float copy of it.

    The mask is multiplied in as uint8 (a view of the bool, no copy): torch's vectorised kernels
    convert uint8 lanes, while a bool operand takes its element-by-element path (one thread,
    8 x 40 x 640: 0.213 ms in bf16, 0.114 ms in fp32, against 0.054 and 0.041 ms for uint8;
    ``python bench/kernels_bench.py --dtype bf16|fp32``, row ``mask_mul``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device).view(torch.uint8)
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


# ---------------------------------------------------------------- Gemma's RMSNorm


class _GemmaRMSNorm(torch.autograd.Function):
    """y = x / rms(x) * (1 + w), computed in fp32 and rounded to x's dtype once, as Gemma's module
    does; saves x (as given) and the per-row 1/rms, and forms the gradients in one short pass:
    dx = r * (g' - x_hat * mean(g' * x_hat)), with g' = g * (1 + w) and x_hat = x * r;
    dw = sum over rows of g * x_hat (only when w is trained)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.float32, copy=True)  # a copy even in fp32: it is scaled in place below
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, r, weight)
        return xf.mul_(r).mul_(weight.float() + 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, r, weight = ctx.saved_tensors
        x_hat = x.float() * r
        g = grad.float()
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (g * x_hat).flatten(0, -2).sum(0).to(weight.dtype)
        g = g * (weight.float() + 1.0)
        dot = (g * x_hat).mean(-1, keepdim=True)
        grad_x = g.sub_(x_hat.mul_(dot)).mul_(r)
        return grad_x.to(x.dtype), grad_weight, None


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm, ``x * rsqrt(mean(x^2) + eps) * (1 + weight)`` in fp32, returned in x's
    dtype: the values of transformers' ``Gemma3RMSNorm``, with a backward of a few fused steps
    instead of autograd's graph (one thread, forward + backward, ``python bench/kernels_bench.py
    --dtype bf16|fp32``, rows ``norm``: 8 x 40 x 640 bf16 1.02 -> 0.49 ms, fp32 0.63 -> 0.38 ms;
    q/k norms 8 x 4 x 40 x 256 bf16 2.44 -> 1.04 ms). Autocast is off inside: the dtypes are
    chosen here."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _GemmaRMSNorm.apply(x, weight, eps)


@functools.lru_cache(maxsize=1)
def _gemma_norm_classes() -> tuple[type, ...]:
    """transformers' Gemma RMSNorm classes that compute exactly ``gemma_rms_norm`` (importable ones)."""
    classes = []
    for module, name in (("transformers.models.gemma3.modeling_gemma3", "Gemma3RMSNorm"),
                         ("transformers.models.gemma2.modeling_gemma2", "Gemma2RMSNorm"),
                         ("transformers.models.gemma.modeling_gemma", "GemmaRMSNorm")):
        try:
            classes.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
    return gemma_rms_norm(x, self.weight, self.eps)


_FUSED: dict[type, type] = {}


def fuse_rms_norms(module: torch.nn.Module) -> int:
    """Give every Gemma RMSNorm under ``module`` the forward of :func:`gemma_rms_norm` (idempotent);
    returns how many were changed. Each instance becomes a subclass of its own class with only
    ``forward`` replaced, so parameters, state-dict keys, ``isinstance`` checks (peft's, for
    LayerNorm tuning) and saved weights are unchanged."""
    classes = _gemma_norm_classes()
    changed = 0
    for sub in module.modules():
        cls = type(sub)
        if cls in classes:
            if cls not in _FUSED:
                _FUSED[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward,
                                                                   "__module__": __name__})
            sub.__class__ = _FUSED[cls]
            changed += 1
    return changed
