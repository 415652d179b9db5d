"""Every config model: a bad value, an unknown key (naming the valid ones) and frozen."""

import pydantic
import pytest

from peftops.config import (BaseConfig, DataConfig, GateConfig, MergeConfig, PipelineParams, TrainConfig, load_params,
                            to_dict, validate)
from peftops.data.manifest import TaskSpec
from peftops.errors import ConfigError
from peftops.evaluation.forgetting import ForgettingConfig
from peftops.methods import available_methods, get_method, make_config

TASK = dict(name="t", train="a.tsv", dev="b.tsv", template="{x}", labels={"0": " A", "1": " B"}, label_field="y",
            fields={"x": "x"})
MODELS = [
    (BaseConfig, {}, "base", ("source", "hf")), (DataConfig, {}, "data", ("max_length", 4)),
    (TrainConfig, {}, "train", ("precision", "fp16")), (MergeConfig, {}, "merge", ("probe_size", 0)),
    (GateConfig, {}, "gate", ("min_pct_of_full", 2000)), (ForgettingConfig, {}, "forgetting", ("size", 0)),
    (TaskSpec, TASK, "tasks.t", ("format", "xlsx")),
]


@pytest.mark.parametrize("cls, good, prefix, bad", MODELS, ids=[m[0].__name__ for m in MODELS])
def test_model_rejects_bad_value_unknown_key_and_is_frozen(cls, good, prefix, bad):
    name, value = bad
    with pytest.raises(ConfigError) as err:
        cls(**{**good, name: value})
    assert f"'{prefix}.{name}'" in str(err.value) and repr(value) in str(err.value)
    with pytest.raises(ConfigError, match=rf"'{prefix}\.nope'.*unknown (key|field); valid (key|field)s are .*{name}"):
        cls(**{**good, "nope": 1})
    obj = cls(**good)
    with pytest.raises(pydantic.ValidationError):
        setattr(obj, name, value)


@pytest.mark.parametrize("method", ["lora", "full", "adapter", "bitfit", "prompt", "prefix"])
def test_method_config_bad_value_unknown_key_frozen(method):
    assert method in available_methods()
    with pytest.raises(ConfigError, match=rf"'methods\.{method}\.lr': must be > 0 \(got -1\)"):
        make_config(method, {"lr": -1})
    with pytest.raises(ConfigError, match=rf"'methods\.{method}\.nope': unknown key; valid keys are .*lr"):
        make_config(method, {"nope": 1})
    cfg = make_config(method)
    assert cfg == get_method(method).config_cls() and cfg.to_dict()["lr"] == cfg.lr
    with pytest.raises(pydantic.ValidationError):
        cfg.lr = 0.1


def test_validate_names_file_field_and_value():
    with pytest.raises(ConfigError) as err:
        validate(PipelineParams, {"train": {"lr": 3}}, "", "p.yaml")
    assert str(err.value).startswith("p.yaml: invalid value for 'train.lr': unknown key; valid keys are ")
    with pytest.raises(ConfigError, match=r"^p.yaml: invalid value for 'train.steps': must be an integer \(got 'x'\)$"):
        validate(PipelineParams, {"train": {"steps": "x"}}, "", "p.yaml")
    with pytest.raises(ConfigError, match=r"'train.warmup_steps': must be in \[0, steps=3\]"):
        validate(PipelineParams, {"train": {"steps": 3, "warmup_steps": 5}}, "", "p.yaml")
    with pytest.raises(ConfigError, match=r"'compare.forgetting.size': must be >= 1"):
        validate(ForgettingConfig, {"size": 0}, "compare.forgetting", "c.yaml")


def test_precision_is_validated_and_defaults_to_auto(tmp_path):
    assert TrainConfig().precision == "auto"  # bf16 where the hardware multiplies it natively
    assert TrainConfig(precision="bf16").precision == "bf16"
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  precision: fp16\n")
    with pytest.raises(ConfigError, match="'train.precision': 'fp16' is not one of auto, fp32, bf16"):
        load_params(p)


def test_params_yaml_spells_out_every_embedded_default():
    import yaml

    from tiny import REPO

    assert yaml.safe_load((REPO / "params.yaml").read_text()) == to_dict(PipelineParams())


def test_params_are_hashable_values_and_for_task_keeps_the_rest():
    from peftops.config import for_task

    p = PipelineParams()
    q = for_task(p, "rte")
    assert q.data.task == "rte" and q.train == p.train and p.data.task == "sst2"
    assert hash(p.train) == hash(TrainConfig()) and {p.merge: 1}[MergeConfig()] == 1


def test_fleet_section_is_validated_and_named(tmp_path):
    from peftops.config import FleetConfig, fleet_config, load_params

    assert PipelineParams().fleet == FleetConfig() and FleetConfig().runner == "local"
    p = tmp_path / "params.yaml"
    p.write_text("fleet:\n  runner: spark\n")
    with pytest.raises(ConfigError, match=r"fleet\.runner"):
        load_params(p)
    with pytest.raises(ConfigError, match=r"fleet\.num_cpus"):
        fleet_config({"num_cpus": 0})
    assert fleet_config(None, runner="ray", num_cpus=2).torch_threads == 2
