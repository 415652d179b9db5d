"""Every method on a tiny Gemma 3: only the intended parameters train, the loss falls, save -> load
reproduces the outputs exactly, mergeable methods merge with parity, and configs reject bad values."""

import json

import pytest
import torch

from methods_cases import CASES, overfit_split, tiny_wide
from peftops.training.batching import build_batch, forward_logits
from peftops.config import TrainConfig
from peftops.errors import ConfigError, PeftopsError
from peftops.methods import available_methods, get_method, make_config
from peftops.model.params import count_params
from peftops.training.loop import train

PROBE = ([[2, 5, 20], [2, 8, 21, 30, 30, 30], [2, 11, 22, 30]], [[40], [41], [40]])


def _probe_logits(model):
    model.eval()
    with torch.no_grad():
        return forward_logits(model, build_batch(*PROBE, pad_id=0))


def test_all_six_methods_are_registered():
    assert set(available_methods()) >= {"lora", "adapter", "bitfit", "prompt", "prefix", "full"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_changes_only_intended_parameters_then_reloads_identically(tmp_path, case):
    name, values, intended = CASES[case]
    method, cfg = get_method(name), make_config(name, values)
    torch.manual_seed(0)
    base = tiny_wide()
    base_params = count_params(base)
    model = method.apply(base, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable == {n for n, _ in model.named_parameters() if intended(n)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    r = train(model, method, cfg, overfit_split(), TrainConfig(steps=25, batch_size=8, warmup_steps=1, precision="fp32"),
              tmp_path, pad_id=0, base_params=base_params, progress=False)

    assert r.losses[-1] < 0.5 * r.losses[0], r.losses
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert changed and changed <= trainable
    untouched = [n for n in before if n not in trainable]
    assert all(torch.equal(after[n], before[n]) for n in untouched)  # bit for bit
    assert sorted(r.trained_names) == sorted(trainable)
    assert r.trainable_params == sum(after[n].numel() for n in trainable) or name == "full"

    # save -> load into a fresh base gives identical outputs
    expected = _probe_logits(model)
    loaded = method.load(tiny_wide(), r.adapter_dir)
    assert torch.equal(_probe_logits(loaded), expected)
    assert json.loads((r.adapter_dir / "peftops_method.json").read_text())["method"] == name

    if method.mergeable:
        merged = method.merge(loaded)
        torch.testing.assert_close(_probe_logits(merged), expected, atol=1e-5, rtol=0)
        assert not any("lora_" in n or "houlsby" in n for n, _ in merged.named_parameters())


@pytest.mark.parametrize("name", ["adapter", "bitfit", "prompt", "prefix"])
def test_padding_does_not_change_a_row(name):
    """Rows scored in a left-padded batch match the same rows alone (prompt methods included)."""
    values = {"num_virtual_tokens": 5} if name in ("prompt", "prefix") else {}
    model = get_method(name).apply(tiny_wide(), make_config(name, values))
    with torch.no_grad():  # move off the identity initialisation so the method matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    prompts, conts = [[2, 10, 11, 12, 13, 14, 15], [2, 20], [2, 30, 31, 32]], [[40], [41, 42], [43]]
    model.eval()
    with torch.no_grad():
        together = forward_logits(model, build_batch(prompts, conts, pad_id=0))
        for i, (p, c) in enumerate(zip(prompts, conts)):
            alone = forward_logits(model, build_batch([p], [c], pad_id=0))
            torch.testing.assert_close(together[i, -len(c):], alone[0, -len(c):], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["adapter", "bitfit"])
def test_fresh_method_leaves_the_model_unchanged(name):
    base = tiny_wide()
    expected = _probe_logits(base)
    model = get_method(name).apply(tiny_wide(), make_config(name, {}))
    assert torch.equal(_probe_logits(model), expected)


def test_bitfit_biases_are_real_linear_biases_and_merge_is_exact():
    method = get_method("bitfit")
    model = method.apply(tiny_wide(), make_config("bitfit", {}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    expected = _probe_logits(model)
    merged = method.merge(model)
    assert torch.equal(_probe_logits(merged), expected)
    assert merged.config.attention_bias is True
    layer = merged.model.layers[0]
    for lin in (layer.self_attn.q_proj, layer.mlp.down_proj):
        assert isinstance(lin.bias, torch.nn.Parameter) and not lin.bias.requires_grad
    assert merged.lm_head.bias is None  # the tied head gets no bias unless asked
    assert not any(p.requires_grad for p in merged.parameters())


def test_bitfit_records_what_it_trained(tmp_path):
    method = get_method("bitfit")
    cfg = make_config("bitfit", {"targets": ["q_proj", "v_proj"], "train_norms": False})
    model = method.apply(tiny_wide(), cfg)
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert names == [f"model.layers.{i}.self_attn.{m}.bias" for i in range(2) for m in ("q_proj", "v_proj")]
    method.save(model, cfg, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["trained_tensors"] == names and saved["peft_type"] == "BITFIT"


def test_lora_switches_reach_peft():
    method = get_method("lora")
    dora = method.apply(tiny_wide(), make_config("lora", {"r": 4, "alpha": 8, "use_dora": True}))
    assert any("lora_magnitude_vector" in n for n, p in dora.named_parameters() if p.requires_grad)
    rs = method.apply(tiny_wide(), make_config("lora", {"r": 4, "alpha": 8, "use_rslora": True}))
    q = rs.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 4 ** 0.5)
    plain = method.apply(tiny_wide(), make_config("lora", {"r": 4, "alpha": 8}))
    assert plain.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)


def test_adapter_sits_after_o_proj_and_mlp_and_is_not_mergeable(tmp_path):
    method = get_method("adapter")
    cfg = make_config("adapter", {"bottleneck": 6, "places": ["attention", "mlp"]})
    model = method.apply(tiny_wide(), cfg)
    layer = model.model.layers[1]
    assert layer.self_attn.o_proj.houlsby.down.out_features == 6
    assert torch.count_nonzero(layer.mlp.houlsby.up.weight) == 0  # zero-initialised up-projection
    assert layer.input_layernorm.weight.requires_grad and model.model.norm.weight.requires_grad
    method.save(model, cfg, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "HOULSBY_ADAPTER" and saved["bottleneck_size"] == 6
    assert saved["insertion_points"] == ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp",
                                         "model.layers.1.self_attn.o_proj", "model.layers.1.mlp"]
    assert (tmp_path / "adapter_model.safetensors").exists()
    with pytest.raises(PeftopsError, match="cannot be folded"):
        method.merge(model)


def test_adapter_load_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(PeftopsError, match="HOULSBY_ADAPTER"):
        get_method("adapter").load(tiny_wide(), tmp_path)


def test_prefix_refuses_inputs_beyond_the_sliding_window():
    model = get_method("prefix").apply(tiny_wide(window=16), make_config("prefix", {"num_virtual_tokens": 12}))
    with pytest.raises(PeftopsError, match="sliding window"):
        forward_logits(model, build_batch([[2, 5, 6, 7, 8]], [[40]], pad_id=0))


INVALID = [
    ("lora", {"r": 0}, "r"), ("lora", {"alpha": -1}, "alpha"), ("lora", {"dropout": 1.0}, "dropout"),
    ("lora", {"target_modules": []}, "target_modules"), ("lora", {"use_dora": "yes"}, "use_dora"),
    ("lora", {"use_rslora": 1}, "use_rslora"), ("lora", {"rank": 8}, "rank"), ("lora", {"lr": 0}, "lr"),
    ("adapter", {"bottleneck": 0}, "bottleneck"), ("adapter", {"activation": "tanh"}, "activation"),
    ("adapter", {"places": ["ffn"]}, "places"), ("adapter", {"places": []}, "places"),
    ("adapter", {"init_std": 0}, "init_std"), ("adapter", {"train_norms": "no"}, "train_norms"),
    ("bitfit", {"targets": "everything"}, "targets"), ("bitfit", {"targets": []}, "targets"),
    ("bitfit", {"lm_head": "no"}, "lm_head"), ("bitfit", {"lr": 1.5}, "lr"),
    ("prompt", {"num_virtual_tokens": 0}, "num_virtual_tokens"), ("prompt", {"init": "text"}, "init"),
    ("prompt", {"num_virtual_tokens": 2.5}, "num_virtual_tokens"),
    ("prefix", {"num_virtual_tokens": -1}, "num_virtual_tokens"),
    ("prefix", {"projection_hidden": 0}, "projection_hidden"), ("prefix", {"projection": "on"}, "projection"),
    ("full", {"lr": 2.0}, "lr"), ("full", {"r": 8}, "r"),
]


@pytest.mark.parametrize("name,values,field", INVALID, ids=[f"{n}.{f}" for n, _, f in INVALID])
def test_invalid_config_names_the_field(name, values, field):
    with pytest.raises(ConfigError) as err:
        make_config(name, values)
    assert f"'methods.{name}.{field}'" in str(err.value)


@pytest.mark.parametrize("name,values,field", [
    ("adapter", {"bottleneck": -3}, "bottleneck"), ("bitfit", {"targets": 5}, "targets"),
    ("prompt", {"num_virtual_tokens": True}, "num_virtual_tokens"), ("prefix", {"projection_hidden": 0}, "projection_hidden"),
])
def test_direct_construction_validates_too(name, values, field):
    with pytest.raises(ConfigError, match=rf"methods\.{name}\.{field}"):
        get_method(name).config_cls(**values)
