"""A published adapter loads anywhere: a portable base name, a model card, the prompt format; peft
loads a LoRA export, peftops' own loader a Houlsby export, and the snapshot names its class."""

import json

import torch


def _publish(params, home, method):
    from peftops import stages as P

    P.stage_prepare(params, home)
    P.stage_train(params, method, home, progress=False)
    ev = P.stage_evaluate(params, method, home)
    return P.stage_publish(params, home, method, metrics={f"dev_{k}": v for k, v in ev.metrics.items()})


def test_published_adapters_carry_a_card_a_prompt_format_and_load_with_peft_or_peftops(tiny_home, tiny_params,
                                                                                      tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftops import stages as P
    from peftops.methods import load_adapter
    from registry import Registry

    home, _ = tiny_home
    params = tiny_params.model_copy(update={"methods": {**tiny_params.methods, "adapter": {"lr": 1e-2}}})
    snap = P._snapshot(params, home)
    assert json.loads((snap.path / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]

    lora_v = _publish(params, home, "lora")
    houlsby_v = _publish(params, home, "adapter")
    with Registry.open(**P.registry_locations(home)) as reg:
        lora_dir = reg.fetch("sst2", lora_v.version, dest=tmp_path / "lora")
        houlsby_dir = reg.fetch("sst2", houlsby_v.version, dest=tmp_path / "houlsby")

    cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == snap.name  # not the training machine's path
    card = (lora_dir / "README.md").read_text()
    assert snap.digest in card and lora_v.lineage["data_digest"] in card and "dev_accuracy" in card
    assert "PeftModel.from_pretrained" in card and "--lora-modules" in card
    prompt = json.loads((lora_dir / "prompt.json").read_text())
    assert prompt["template"] == "Review: {sentence}\nSentiment:" and prompt["labels"] == {"0": " negative",
                                                                                          "1": " positive"}
    houlsby_card = (houlsby_dir / "README.md").read_text()
    assert "cannot load" in houlsby_card and "load_adapter" in houlsby_card

    # the LoRA export through plain peft computes what peftops' own loading computes
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    ours = P.load_adapted(snap, "lora", home / "runs" / "sst2" / "lora" / "adapter", torch.device("cpu"), "fp32")
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(snap.path, dtype=torch.float32),
                                       str(lora_dir)).eval()
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-5)
        # and the Houlsby export through peftops' loader, from the exported folder alone
        base = AutoModelForCausalLM.from_pretrained(snap.path, dtype=torch.float32)
        loaded = load_adapter(base, houlsby_dir).eval()
        direct = P.load_adapted(snap, "adapter", home / "runs" / "sst2" / "adapter" / "adapter",
                                torch.device("cpu"), "fp32")
        assert torch.allclose(loaded(ids).logits, direct(ids).logits, atol=1e-5)
