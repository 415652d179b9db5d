"""Every method in fp32 and in bf16 on a tiny Gemma 3: the loop resolves the precision; only the
intended parameters change; trainable weights and the optimizer state stay fp32 while a bf16
run's frozen base is stored in bf16 (FFT: fp32 master weights); the loss falls; save -> load into a
base stored the same way reproduces the outputs exactly."""

import pytest
import torch
from safetensors.torch import load_file

from methods_cases import overfit_split, tiny_wide
from peftops.config import TrainConfig
from peftops.methods import get_method, make_config
from peftops.methods.base import freeze_all
from peftops.training.batching import build_batch, forward_logits
from peftops.model.params import count_params
from peftops.training.loop import train
from peftops.training.precision import autocast, keep_activation_dtype, place_parameters, storage_dtype

PROBE = ([[2, 5, 20], [2, 8, 21, 30, 30, 30], [2, 11, 22, 30]], [[40], [41], [40]])

# method -> (config values, predicate on parameter names: what may train)
CASES = {
    "lora": ({"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.1}, lambda n: "lora_" in n),
    "adapter": ({"lr": 3e-2, "bottleneck": 8}, lambda n: ".houlsby." in n or n.endswith("norm.weight")),
    "bitfit": ({"lr": 5e-2}, lambda n: n.endswith("_proj.bias") or n.endswith("norm.weight")),
    "prompt": ({"lr": 3e-1, "num_virtual_tokens": 8}, lambda n: "prompt_encoder" in n),
    "prefix": ({"lr": 3e-1, "num_virtual_tokens": 8}, lambda n: "prompt_encoder" in n),
    "full": ({"lr": 5e-3}, lambda n: True),
}


def _stored_base(precision: str, method) -> torch.nn.Module:
    """A fresh base as ``load_model`` gives it for ``precision`` (frozen parameters, buffers as built)."""
    model = tiny_wide()
    freeze_all(model)
    return place_parameters(model, "bf16" if storage_dtype(precision, method) == torch.bfloat16 else "fp32")


def _probe_logits(model, precision):
    model.eval()
    with torch.no_grad(), autocast("cpu", precision):
        return forward_logits(model, build_batch(*PROBE, pad_id=0)).float()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_method_trains_in_its_precision_then_reloads_identically(tmp_path, name, precision):
    values, intended = CASES[name]
    method, cfg = get_method(name), make_config(name, values)
    torch.manual_seed(0)
    base = _stored_base(precision, method)
    base_params = count_params(base)
    model = method.apply(base, cfg)
    place_parameters(model, precision)  # what train() does first; the snapshot below sees it
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable == {n for n, _ in model.named_parameters() if intended(n)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    tcfg = TrainConfig(steps=20, batch_size=8, warmup_steps=1, checkpoint_every=10, precision=precision)
    r = train(model, method, cfg, overfit_split(), tcfg, tmp_path, pad_id=0, base_params=base_params,
              progress=False)

    assert r.precision == precision
    assert r.losses[-1] < 0.5 * r.losses[0], r.losses
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert changed and changed <= trainable
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)  # bit for bit
    assert {after[n].dtype for n in trainable} == {torch.float32}
    frozen = {p.dtype for n, p in after.items() if n not in trainable and p.is_floating_point()}
    assert frozen <= {torch.bfloat16 if precision == "bf16" else torch.float32}
    opt_state = load_file(str(tmp_path / "checkpoints" / "step-0000010" / "optimizer.safetensors"))
    assert opt_state and {v.dtype for k, v in opt_state.items() if not k.endswith(".step")} == {torch.float32}
    assert {v.dtype for v in load_file(str(tmp_path / "checkpoints" / "step-0000010" /
                                           "trainable.safetensors")).values()} == {torch.float32}

    expected = _probe_logits(model, precision)
    loaded = keep_activation_dtype(method.load(_stored_base(precision, method), r.adapter_dir), precision)
    assert torch.equal(_probe_logits(loaded, precision), expected)
