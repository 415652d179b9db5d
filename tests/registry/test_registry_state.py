"""Where state lives: found upwards from the current directory; read commands never create it;
an unknown metric in a search names the recorded ones."""

from __future__ import annotations

import json

import pytest
from regtestlib import DIGEST, make_adapter, make_base
from typer.testing import CliRunner

from registry import Registry, UnknownMetric
from registry.cli import registry_app
from registry.config import find_state, state_dir


@pytest.fixture
def project(tmp_path, monkeypatch):
    for k in ("PEFTOPS_HOME", "PEFTOPS_REGISTRY_DB", "PEFTOPS_REGISTRY_BLOBS", "PEFTOPS_DATA_ROOT"):
        monkeypatch.delenv(k, raising=False)
    root = tmp_path / "proj"
    (root / "sub" / "deeper").mkdir(parents=True)
    return root


def test_read_commands_refuse_to_create_state(project, monkeypatch):
    monkeypatch.chdir(project / "sub")
    r = CliRunner().invoke(registry_app, ["list"])
    assert r.exit_code == 1 and "no .peftops/ directory in" in r.output
    assert str(project / "sub") in " ".join(r.output.split())
    assert not (project / "sub" / ".peftops").exists()
    for cmd in (["show", "sst2"], ["verify"], ["tasks"], ["fetch", "sst2", "out"]):
        assert CliRunner().invoke(registry_app, cmd).exit_code == 1
    assert not any(p.name == ".peftops" for p in project.rglob("*"))


def test_state_is_found_upwards_and_created_by_publish(project, monkeypatch, tmp_path):
    base = make_base(tmp_path / "base")
    monkeypatch.chdir(project)
    r = CliRunner().invoke(registry_app, ["register-base", str(base), "--digest", DIGEST])
    assert r.exit_code == 0, r.output
    assert (project / ".peftops" / "registry" / "registry.db").exists()
    r = CliRunner().invoke(registry_app, ["publish", "sst2", str(make_adapter(tmp_path / "a")),
                                          "--base", DIGEST, "--metric", "dev_accuracy=0.9",
                                          "--alias", "staging", "--actor", "carol"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(project / "sub" / "deeper")
    assert find_state() == project / ".peftops" and state_dir(must_exist=True) == project / ".peftops"
    r = CliRunner().invoke(registry_app, ["list", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["items"][0]["task"] == "sst2"
    r = CliRunner().invoke(registry_app, ["history", "sst2", "--json"])
    assert json.loads(r.output)[0]["actor"] == "carol"
    r = CliRunner().invoke(registry_app, ["list", "--metric", "accuracy>=0.9"])
    assert r.exit_code == 1 and "unknown metric 'accuracy'" in r.output and "dev_accuracy" in r.output
    monkeypatch.setenv("PEFTOPS_HOME", str(tmp_path / "elsewhere"))  # the environment wins
    assert state_dir() == tmp_path / "elsewhere"


def test_python_search_by_unknown_metric_lists_the_known(reg, tmp_path):
    reg.publish("sst2", make_adapter(tmp_path / "a"), base_digest=DIGEST, method="lora",
                metrics={"dev_accuracy": 0.9, "pct_of_full": 100.0})
    with pytest.raises(UnknownMetric) as e:
        reg.search(metric=("accuracy", ">=", 0.9))
    assert e.value.known == ["dev_accuracy", "pct_of_full"]
    assert reg.metric_names() == ["dev_accuracy", "pct_of_full"]
    assert len(reg.search(metric=("dev_accuracy", ">=", 0.9)).items) == 1
    assert isinstance(Registry, type)


def test_data_root_is_beside_the_project_root(project, monkeypatch):
    from peftops.config import default_data_root, state_home

    (project / ".peftops").mkdir()
    monkeypatch.chdir(project / "sub" / "deeper")
    assert state_home() == project / ".peftops"
    assert default_data_root() == (project.parent / "shared" / "data").resolve()
    monkeypatch.setenv("PEFTOPS_DATA_ROOT", str(project / "d"))
    assert default_data_root() == project / "d"
