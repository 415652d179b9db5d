"""Token-budgeted forwards: a batch split into pieces makes the same update as the whole batch."""

import pytest
import torch

from peftops.training.batching import split_by_tokens
from peftops.config import TrainConfig
from peftops.errors import ConfigError
from peftops.methods import get_method, make_config
from peftops.training.loop import hf_model, train
from test_train import overfit_split
from tiny import tiny_model


def test_split_by_tokens_respects_the_budget_and_order():
    widths = [3, 3, 4, 4, 5, 9, 9, 20]
    groups = split_by_tokens(widths, 12)
    assert [i for g in groups for i in g] == list(range(len(widths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(widths[i] for i in g) <= 12
    assert groups[-1] == [7]  # wider than the budget: alone
    assert split_by_tokens(widths, 0) == [list(range(8))]
    assert split_by_tokens([5] * 4, 100) == [[0, 1, 2, 3]]


def test_budget_is_validated():
    with pytest.raises(ConfigError, match="train.max_batch_tokens"):
        TrainConfig(max_batch_tokens=-1)


@pytest.mark.parametrize("name,values", [("lora", {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}),
                                         ("full", {"lr": 5e-3})])
def test_split_batches_train_like_whole_ones(tmp_path, name, values):
    method, cfg = get_method(name), make_config(name, values)
    models, results = [], []
    for budget in (0, 8):
        torch.manual_seed(0)
        model = method.apply(tiny_model(seed=0), cfg)
        tcfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1, max_batch_tokens=budget, precision="fp32")
        results.append(train(model, method, cfg, overfit_split(), tcfg, tmp_path / str(budget), pad_id=0,
                             base_params=1, progress=False))
        models.append(model)
    whole, split = results
    assert whole.examples_per_s > 0 and split.steps == whole.steps == 6
    torch.testing.assert_close(torch.tensor(split.losses), torch.tensor(whole.losses), atol=1e-4, rtol=1e-4)
    for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name,values", [("lora", {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.1}),
                                         ("adapter", {"lr": 1e-2, "bottleneck": 4}),
                                         ("prompt", {"lr": 1e-1, "num_virtual_tokens": 3})])
def test_activation_checkpointing_trains_like_keeping_activations(tmp_path, name, values):
    """Recomputing activations (dropout masks replayed) gives the same update; it is switched off after."""
    method, cfg = get_method(name), make_config(name, values)
    models = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = method.apply(tiny_model(seed=0), cfg)
        train(model, method, cfg, overfit_split(), TrainConfig(steps=4, batch_size=8, warmup_steps=1,
                                                               activation_checkpointing=ckpt, precision="fp32"),
              tmp_path / str(ckpt), pad_id=0, base_params=1, progress=False)
        models.append(model)
    inner = hf_model(models[1])
    assert not inner.is_activation_checkpointing
    for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
