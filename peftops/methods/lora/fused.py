"""A cheaper forward for peft's LoRA ``Linear``: scaling folded into B, the sum fused into the product.

peft computes ``base(x) + lora_B(lora_A(dropout(x.to(A.dtype)))) * scaling``: an fp32 copy of the
input (the frozen base is bf16, LoRA's weights fp32), a multiply over the whole output, an add over
it, and the backward of each. Here the same sum is one ``addmm``: ``base(x) + h @ (s * B)^T`` with
``h = lora_A(dropout(x))`` in the input's dtype. ``s * B`` is a small fp32 product (out x r) that
autograd differentiates back to B; the base output is the addmm's accumulator, so it costs
neither a pass nor a copy, and its gradient passes through unchanged.

Values: the dropout's product is rounded once either way (fp32 then autocast's cast, or bf16
directly), and with LoRA's default scaling (alpha / r = 2, a power of two) ``s * B`` rounds exactly
as B does; what differs is only that addmm adds the base output inside the product's fp32
accumulator instead of after rounding each term to bf16. ``tests/test_lora_fused.py`` bounds the
difference against peft's forward, outputs and gradients, in fp32 and bf16. What it buys:
``python bench/kernels_bench.py --dtype bf16``, row ``lora``.

Anything this does not cover — DoRA or another variant, a LoRA bias, mixed-adapter batches,
disabled or merged adapters, an input whose dtype differs from LoRA's outside autocast — takes
peft's own forward.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _fused_class() -> type:
    from peft.tuners.lora.layer import Linear

    class FusedLoraLinear(Linear):
        """peft's LoRA ``Linear`` with :func:`lora_addmm` as its plain forward."""

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if not _fusable(self, x, args, kwargs):
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x)
            for name in self.active_adapters:
                if name in self.lora_A:
                    result = lora_addmm(result, self.lora_dropout[name](x), self.lora_A[name].weight,
                                        self.lora_B[name].weight, self.scaling[name])
            return result

    return FusedLoraLinear


def _fusable(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    if args or kwargs or layer.disable_adapters or layer.merged:
        return False
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in layer.lora_variant or layer.lora_B[name].bias is not None:
            return False
        if x.dtype != layer.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
            return False  # peft casts the input to LoRA's dtype; only autocast makes that moot
    return True


def lora_addmm(result: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               scaling: float) -> torch.Tensor:
    """``result + (x @ a^T) @ (scaling * b)^T`` as one accumulate-into product (autocast applies)."""
    h = torch.nn.functional.linear(x, a)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), (b * scaling).t())
    return out.view(result.shape)


def fuse_lora_linears(model: torch.nn.Module) -> int:
    """Give every peft LoRA ``Linear`` under ``model`` the fused forward (idempotent); returns how
    many were changed. Only the instance's class changes (a subclass with ``forward`` replaced), so
    parameters, state-dict keys, ``isinstance`` checks, saving and ``merge_and_unload`` are peft's."""
    from peft.tuners.lora.layer import Linear

    fused = _fused_class()
    changed = 0
    for sub in model.modules():
        if type(sub) is Linear:
            sub.__class__ = fused
            changed += 1
    return changed
