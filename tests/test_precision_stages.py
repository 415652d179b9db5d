"""Precision through the stages: ``auto`` resolves from the hardware (fp32 without native bf16,
said once), the resolved precision is recorded in train.json, eval.json and merge.json, and a bf16
LoRA merges with a certificate that states its precision and tolerance."""

import json
import warnings

import pytest
import torch

from peftops import stages as P
from peftops.evaluation.merge import tolerance_for
from peftops.training import precision as prec


def test_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(prec, "bf16_native", lambda device="cpu": True)
    assert prec.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(prec, "bf16_native", lambda device="cpu": False)
    monkeypatch.setattr(prec, "_SAID", set())
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert prec.resolve_precision("auto", "cpu") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not at every stage
        assert prec.resolve_precision("auto", "cpu") == "fp32"
    assert prec.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError):
        prec.resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16\n\nprocessor : 1\n")
    assert prec.cpu_bf16_flags.__wrapped__(str(info)) == ("avx512_bf16",)
    info.write_text("flags : fpu sse avx2\n")
    assert prec.cpu_bf16_flags.__wrapped__(str(info)) == ()
    assert prec.cpu_bf16_flags.__wrapped__(str(tmp_path / "absent")) == ()


def test_auto_without_bf16_trains_in_fp32_and_records_it(tiny_params, tiny_home, monkeypatch):
    monkeypatch.setattr(prec, "bf16_native", lambda device="cpu": False)
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"precision": "auto"})})
    P.stage_prepare(params, home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = P.stage_train(params, "lora", home, progress=False)
    assert r.precision == "fp32"
    info = json.loads((P.Layout.of(home).run("sst2", "lora") / "train.json").read_text())
    assert info["precision"] == "fp32" and info["requested_precision"] == "auto"


def test_bf16_lora_records_its_precision_and_merges_within_the_bf16_tolerance(tiny_params, tiny_home, tmp_path):
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"precision": "bf16"})})
    P.stage_prepare(params, home)
    r = P.stage_train(params, "lora", home, progress=False)
    assert r.precision == "bf16" and r.losses[-1] < r.losses[0]
    run = P.Layout.of(home).run("sst2", "lora")
    assert json.loads((run / "train.json").read_text())["precision"] == "bf16"

    ev = P.stage_evaluate(params, "lora", home)
    assert ev.precision == "bf16" and json.loads((run / "eval.json").read_text())["precision"] == "bf16"
    assert ev.examples_per_s > 0

    cert = P.stage_merge(params, home, "lora", export_dir=tmp_path / "merged", export_dtype="bf16")
    bf16_tol = tolerance_for("bf16", params.merge.tolerance)
    assert bf16_tol == 1.0  # at the default merge.tolerance (1e-3)
    assert cert.passed and cert.precision == "bf16" and cert.tolerance == bf16_tol
    assert cert.max_abs_dlogit <= bf16_tol and cert.export_max_abs_dlogit <= bf16_tol
    assert cert.export_dtype == "bf16"
    on_disk = json.loads((run / "merge.json").read_text())
    assert on_disk["precision"] == "bf16" and on_disk["tolerance"] == bf16_tol
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}

    # an fp32 export of the same bf16 run: fp32 weights, still certified at bf16
    cert32 = P.stage_merge(params, home, "lora", export_dir=tmp_path / "merged32")
    assert cert32.passed and cert32.export_dtype == "fp32"
    assert json.loads((tmp_path / "merged32" / "config.json").read_text())["dtype"] == "float32"

    # the registry lineage carries the run's precision and the certificate's
    v = P.stage_publish(params, home, "lora")
    assert v.lineage["precision"] == "bf16" and v.lineage["merge_parity"]["precision"] == "bf16"
