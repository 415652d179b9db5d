"""The real Gemma 3 270M: snapshot from the GGUF package, a few LoRA steps, merge parity.

Marked ``slow`` (about 2 minutes on 2 cores); ``make test`` still runs it.
"""

import json

import pytest

from tiny import SHARED_DATA

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")]


def test_real_snapshot_lora_learns_and_merges(real_snapshot):
    from peftops import stages as P
    from peftops.model.snapshot import MANIFEST, open_snapshot
    from peftops.config import DataConfig, MergeConfig, PipelineParams, TrainConfig

    home, snap = real_snapshot
    manifest = json.loads((snap.path / MANIFEST).read_text())
    assert manifest["digest"] == snap.digest and set(manifest["files"]) >= {"model.safetensors", "tokenizer.json"}
    cfg = json.loads((snap.path / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (640, 18, 262144)
    assert cfg["tie_word_embeddings"] is True and "quantization_config" not in cfg
    assert open_snapshot(snap.path).digest == snap.digest

    params = PipelineParams(
        data=DataConfig(data_root=str(SHARED_DATA), train_size=8, dev_size=8),
        # fp32: this checks the fp32 certificate's tolerance (bf16's is tested in test_precision_stages.py)
        train=TrainConfig(steps=6, batch_size=4, warmup_steps=1, schedule="constant", precision="fp32"),
        merge=MergeConfig(tolerance=1e-3, probe_size=8),
        methods={"lora": {"lr": 1e-3, "r": 16, "alpha": 32, "dropout": 0.0}},
    )
    P.stage_prepare(params, home)
    result = P.stage_train(params, "lora", home, progress=False)
    assert result.trainable_params == 3_796_992  # r=16 on every linear layer of the 18 blocks
    assert result.base_params == 268_098_176
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < first, result.losses
    cert = P.stage_merge(params.model_copy(), home, "lora")
    assert cert.passed and cert.n_probes == 8
    assert cert.max_abs_dlogit < 1e-3 and cert.mean_kl < 1e-6
