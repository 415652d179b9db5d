import pytest

from peftops.config import PipelineParams, TrainConfig, load_params
from peftops.errors import ConfigError
from peftops.methods import make_config


def test_embedded_defaults_match_params_yaml():
    from tiny import REPO

    assert load_params(REPO / "params.yaml") == PipelineParams()


@pytest.mark.parametrize("text, field", [
    ("train:\n  stepz: 3\n", "train.stepz"),
    ("train:\n  steps: 0\n", "train.steps"),
    ("train:\n  steps: many\n", "train.steps"),
    ("train:\n  schedule: wavy\n", "train.schedule"),
    ("data:\n  train_size: -1\n", "data.train_size"),
    ("bogus: {}\n", "bogus"),
    ("merge:\n  tolerance: 0\n", "merge.tolerance"),
])
def test_bad_params_name_file_and_field(tmp_path, text, field):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(p)
    assert field in str(err.value) and str(p) in str(err.value)


@pytest.mark.parametrize("method, values, field", [
    ("lora", {"r": 0}, "methods.lora.r"),
    ("lora", {"alpha": -1}, "methods.lora.alpha"),
    ("lora", {"dropout": 1.5}, "methods.lora.dropout"),
    ("lora", {"target_modules": []}, "methods.lora.target_modules"),
    ("lora", {"rank": 8}, "methods.lora.rank"),
    ("full", {"lr": 0}, "methods.full.lr"),
])
def test_method_configs_reject_invalid_values(method, values, field):
    with pytest.raises(ConfigError) as err:
        make_config(method, values)
    assert field in str(err.value)


def test_warmup_longer_than_run_is_rejected():
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        TrainConfig(steps=3, warmup_steps=4)
