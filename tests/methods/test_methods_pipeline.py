"""The new methods through the pipeline stages (train -> train.json -> evaluate) on a tiny snapshot."""

import json

import pytest

from peftops import stages as P
from peftops.errors import PeftopsError

METHODS = {"adapter": {"lr": 1e-2, "bottleneck": 4}, "bitfit": {"lr": 5e-2},
           "prompt": {"lr": 1e-1, "num_virtual_tokens": 2}}


def _params(tiny_params, name, values):
    return tiny_params.model_copy(update={"methods": {**tiny_params.methods, name: values},
                                          "train": tiny_params.train.model_copy(update={"steps": 3})})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_stage_train_records_what_trained_and_evaluates(tiny_params, tiny_home, name):
    home, _ = tiny_home
    params = _params(tiny_params, name, METHODS[name])
    P.stage_prepare(params, home)
    result = P.stage_train(params, name, home, progress=False)
    info = json.loads((result.adapter_dir.parent / "train.json").read_text())
    assert info["trainable_params"] == result.trainable_params > 0
    assert sorted(info["trained_parameter_names"]) == sorted(result.trained_names)
    if name == "bitfit":
        assert all(n.endswith(".bias") or n.endswith("norm.weight") for n in info["trained_parameter_names"])
    ev = P.stage_evaluate(params, name, home)
    assert 0.0 <= ev.score <= 1.0 and ev.n > 0


def test_prefix_beyond_the_sliding_window_stops_with_a_clear_error(tiny_params, tiny_home):
    home, _ = tiny_home  # the tiny snapshot's sliding window is 16 tokens
    params = _params(tiny_params, "prefix", {"num_virtual_tokens": 20})
    P.stage_prepare(params, home)
    with pytest.raises(PeftopsError, match="sliding window"):
        P.stage_train(params, "prefix", home, progress=False)
