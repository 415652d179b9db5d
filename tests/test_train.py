"""The training loop on tiny Gemma 3 models: learning, frozen parameters, resume, NaN."""

import pytest
import torch

from peftops.config import TrainConfig
from peftops.data.prepared import PreparedSplit
from peftops.errors import TrainingError
from peftops.methods import get_method, make_config
from peftops.model.params import count_params
from peftops.training.loop import Schedule, train
from tiny import tiny_model


def overfit_split(n=16):
    # prompt "2 a b" -> label token 40 if a is even else 41 (a learnable rule)
    ids = [[2, 5 + (i % 7), 20 + i % 3] for i in range(n)]
    labels = [(i % 7) % 2 for i in range(n)]
    return PreparedSplit(task="t", split="train", verbalizers=[" x", " y"], label_token_ids=[[40], [41]],
                         input_ids=ids, labels=labels, lines=list(range(n)), source="mem", source_sha256="")


CASES = {
    "lora": ({"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}, "lora_"),
    "full": ({"lr": 5e-3}, ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_falls_and_only_intended_parameters_change(tmp_path, name):
    values, marker = CASES[name]
    method = get_method(name)
    cfg = make_config(name, values)
    base = tiny_model(seed=0)
    base_params = count_params(base)
    model = method.apply(base, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = train(model, method, cfg, overfit_split(), TrainConfig(steps=25, batch_size=8, warmup_steps=1, precision="fp32"),
              tmp_path, pad_id=0, base_params=base_params, progress=False)
    assert r.losses[-1] < 0.5 * r.losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if marker:
        assert changed and all(marker in n for n in changed)
        frozen = [n for n in before if marker not in n]
        assert all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in frozen)
    else:
        assert changed == set(before)
    assert (tmp_path / "adapter").is_dir() and r.adapter_bytes > 0


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    cfg = make_config("lora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.1})  # dropout: RNG must resume too
    tcfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=3, schedule="cosine", precision="fp32")
    method = get_method("lora")

    def run(directory, interrupt_after=None):
        model = method.apply(tiny_model(seed=0), cfg)
        train(model, method, cfg, overfit_split(12), tcfg, directory, pad_id=0, base_params=1, progress=False,
              max_steps_this_call=interrupt_after)
        return model

    straight = run(tmp_path / "a")
    run(tmp_path / "b", interrupt_after=4)  # stops after step 4; last checkpoint is step 3
    resumed = run(tmp_path / "b")
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("damage", ["truncated weights", "truncated state", "missing rng"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage, caplog):
    cfg = make_config("lora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.1})
    tcfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=2, schedule="cosine", precision="fp32")
    method = get_method("lora")

    def run(directory, interrupt_after=None):
        model = method.apply(tiny_model(seed=0), cfg)
        r = train(model, method, cfg, overfit_split(12), tcfg, directory, pad_id=0, base_params=1, progress=False,
                  max_steps_this_call=interrupt_after)
        return model, r

    straight, _ = run(tmp_path / "a")
    run(tmp_path / "b", interrupt_after=5)  # checkpoints at steps 2 and 4
    ckpts = tmp_path / "b" / "checkpoints"
    latest = ckpts / "step-0000004"
    if damage == "truncated weights":
        f = latest / "trainable.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "truncated state":
        f = latest / "state.json"
        f.write_text(f.read_text()[:50])
    else:
        (latest / "rng.safetensors").unlink()
    leftover = ckpts / ".step-0000006.tmp-killed"  # an interrupted checkpoint write
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="peftops.training.loop"):
        resumed, r = run(tmp_path / "b")
    assert r.resumed_from == 2
    assert "step-0000004: unreadable checkpoint" in caplog.text
    assert not leftover.exists()
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_nan_loss_stops_with_the_step(tmp_path):
    method = get_method("full")
    cfg = make_config("full", {"lr": 1e-3})
    model = method.apply(tiny_model(seed=0), cfg)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 1"):
        train(model, method, cfg, overfit_split(), TrainConfig(steps=3, warmup_steps=0), tmp_path, pad_id=0,
              base_params=1, progress=False)
    assert not (tmp_path / "adapter").exists()


def test_schedules():
    lin = Schedule(TrainConfig(steps=10, warmup_steps=2, schedule="linear"))
    cos = Schedule(TrainConfig(steps=10, warmup_steps=2, schedule="cosine"))
    assert lin(0) < lin(1) < lin(2) == 1.0 and lin(10) == 0.0
    assert cos(2) == 1.0 and abs(cos(6) - 0.5) < 1e-9 and cos(10) < 1e-12
