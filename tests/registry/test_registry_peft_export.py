"""The strongest proof: a real PEFT adapter of a tiny Gemma 3 goes through publish and
export, and peft loads the exported folder into a model that computes the same logits."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from regtestlib import DIGEST  # noqa: E402

from registry import LintError, Registry  # noqa: E402


def _tiny_gemma(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    return transformers.Gemma3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft")
    base = _tiny_gemma()
    base.save_pretrained(tmp / "base")
    reg = Registry.open(f"sqlite:///{tmp / 'r.db'}", (tmp / "blobs").as_uri())
    reg.register_base(tmp / "base", digest=DIGEST, name="tiny-gemma3")
    yield tmp, reg
    reg.close()


def _trained_adapter(tmp, name, **lora):
    model = peft.get_peft_model(_tiny_gemma(), peft.LoraConfig(task_type="CAUSAL_LM", **lora))
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: non-zero B so the adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp / name)
    return model.eval()


def test_exported_adapter_loads_in_peft_and_computes_the_same(setup):
    tmp, reg = setup
    model = _trained_adapter(tmp, "lora", r=4, lora_alpha=8,
                             target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    v = reg.publish("tiny", tmp / "lora", base_digest=DIGEST, method="lora",
                    aliases=["production"])
    assert v.vllm_servable and v.lint == ()
    [exp] = reg.export([("tiny", v.version)], tmp / "export", base_digest=DIGEST)
    assert exp.name == "tiny-v1" and exp.lora_module == f"tiny-v1={exp.path}"

    loaded = peft.PeftModel.from_pretrained(
        transformers.Gemma3ForCausalLM.from_pretrained(tmp / "base"), exp.path).eval()
    ids = torch.tensor([[2, 5, 17, 33, 99, 4]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        plain = _tiny_gemma()(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(plain, want)  # the adapter really changes the output


def test_real_dora_adapter_is_flagged_but_loads(setup):
    tmp, reg = setup
    _trained_adapter(tmp, "dora", r=4, target_modules=["q_proj"], use_dora=True)
    v = reg.publish("tiny-dora", tmp / "dora", base_digest=DIGEST, method="dora")
    assert not v.vllm_servable and any("DoRA" in w for w in v.lint)
    [exp] = reg.export([v], tmp / "export-dora")
    peft.PeftModel.from_pretrained(
        transformers.Gemma3ForCausalLM.from_pretrained(tmp / "base"), exp.path)


def test_real_adapter_for_another_architecture_is_refused(setup):
    tmp, reg = setup
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    other = peft.get_peft_model(transformers.Gemma3ForCausalLM(cfg),
                                peft.LoraConfig(r=4, target_modules=["q_proj"]))
    other.save_pretrained(tmp / "wide")
    with pytest.raises(LintError, match="expected"):
        reg.publish("wide", tmp / "wide", base_digest=DIGEST, method="lora")
