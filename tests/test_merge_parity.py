"""Merge with a parity certificate: LoRA and BitFit fold into a plain Gemma 3; the export is re-checked."""

import json

import pytest
import torch

from peftops import stages as P
from peftops.errors import ParityError, PeftopsError

BITFIT_ATTENTION = {"lr": 2e-2, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _train(params, home, method):
    P.stage_prepare(params, home)
    P.stage_train(params, method, home, progress=False)


def _plain_reload_matches_adapter(params, home, method, export):
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(export)
    assert type(merged).__name__ == "Gemma3ForCausalLM"
    adapted = P.load_adapted(P._snapshot(params, home), method, P.Layout.of(home).run("sst2", method) / "adapter",
                             torch.device("cpu"))
    x = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, adapted(input_ids=x).logits, atol=1e-4, rtol=1e-4)
    return merged


def test_lora_export_carries_weights_config_tokenizer_and_its_certificate(tiny_params, tiny_home, tmp_path):
    home, _ = tiny_home
    _train(tiny_params, home, "lora")
    cert = P.stage_merge(tiny_params, home, "lora", export_dir=tmp_path / "merged")
    assert cert.passed and cert.export_max_abs_dlogit < 1e-4 and cert.export_mean_kl < 1e-8
    assert cert.base_digest == P._snapshot(tiny_params, home).digest
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "parity.json"} <= files
    assert json.loads((tmp_path / "merged" / "parity.json").read_text())["export_max_abs_dlogit"] == \
        cert.export_max_abs_dlogit
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    merged = _plain_reload_matches_adapter(tiny_params, home, "lora", tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # the certificate lands in the run dir, where publishing picks it up for the registry lineage
    on_disk = json.loads((P.Layout.of(home).run("sst2", "lora") / "merge.json").read_text())
    assert on_disk["passed"] and on_disk["export_dir"] == str(tmp_path / "merged")


def test_bitfit_attention_biases_merge_into_plain_gemma3_with_parity(tiny_params, tiny_home, tmp_path):
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"methods": {**tiny_params.methods, "bitfit": BITFIT_ATTENTION}})
    _train(params, home, "bitfit")
    cert = P.stage_merge(params, home, "bitfit", export_dir=tmp_path / "merged")
    assert cert.passed and cert.method == "bitfit"
    assert cert.max_abs_dlogit < 1e-4 and cert.export_max_abs_dlogit < 1e-4
    merged = _plain_reload_matches_adapter(params, home, "bitfit", tmp_path / "merged")
    assert merged.config.attention_bias is True
    q = merged.model.layers[0].self_attn.q_proj.bias
    assert q is not None and q.abs().sum() > 0  # the trained biases survived the round trip


def test_bitfit_mlp_biases_have_no_slot_in_gemma3_so_the_export_is_refused(tiny_params, tiny_home, tmp_path):
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"methods": {**tiny_params.methods, "bitfit": {"lr": 2e-2}}})  # all-linear
    _train(params, home, "bitfit")
    cert = P.stage_merge(params, home, "bitfit")  # in memory the merge is exact...
    assert cert.passed and cert.export_dir is None
    with pytest.raises(ParityError, match="reloaded as a plain .*export removed"):  # ...but not once reloaded
        P.stage_merge(params, home, "bitfit", export_dir=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_methods_that_cannot_merge_are_refused_clearly(tiny_params, tiny_home):
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"methods": {**tiny_params.methods, "prompt": {"num_virtual_tokens": 4}}})
    _train(params, home, "prompt")
    with pytest.raises(PeftopsError, match="method 'prompt' cannot be merged"):
        P.stage_merge(params, home, "prompt")


def test_probe_logits_come_back_in_the_prompts_order_whatever_the_batching():
    """The certificate batches its probes shortest first; row i is still prompt i's logits."""
    from peftops.evaluation.merge import last_logits
    from tiny import tiny_model

    model = tiny_model(layers=2).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 160, (n,), generator=g).tolist() for n in (9, 2, 14, 5, 5, 1, 11)]
    together = last_logits(model, prompts, pad_id=0, batch_size=3)
    one_by_one = torch.cat([last_logits(model, [p], pad_id=0, batch_size=1) for p in prompts])
    assert together.shape == (len(prompts), 160)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-4)
