"""`peftops registry ...` through typer's CliRunner (the sub-app the main CLI mounts)."""

import json

import pytest
from regtestlib import DIGEST, make_adapter, make_base
from typer.testing import CliRunner

from registry.cli import registry_app

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PEFTOPS_REGISTRY_DB", raising=False)
    monkeypatch.delenv("PEFTOPS_REGISTRY_BLOBS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def run(*args, ok=True):
    r = runner.invoke(registry_app, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output
    return r


def test_cli_workflow(env):
    base = make_base(env / "base")
    run("register-base", base, "--digest", DIGEST, "--name", "tiny")
    for i in range(3):
        a = make_adapter(env / f"a{i}", seed=i)
        out = json.loads(run("publish", "sst2", a, "--base", DIGEST, "--metric", f"acc={i / 3}",
                             "--tag", "team=nlp", "--json").output)
        assert out["version"] == i + 1 and out["created"] is True
    again = json.loads(run("publish", "sst2", env / "a0", "--base", DIGEST, "--json").output)
    assert again["version"] == 1 and again["created"] is False

    table = run("list", "--task", "sst2").output
    assert "sst2" in table and "acc=0.6667" in table
    page = json.loads(run("search", "--metric", "acc>=0.3", "--json").output)
    assert [v["version"] for v in page["items"]] == [3, 2]
    assert json.loads(run("list", "--tag", "team=nlp", "--limit", "1", "--json").output
                      )["next_page_token"]

    run("promote", "sst2", "production", 2)
    assert json.loads(run("show", "sst2", "--alias", "production", "--json").output
                      )["version"] == 2
    assert "production" in run("show", "sst2", "-v", 2).output
    tasks = json.loads(run("tasks", "--json").output)["items"]
    assert tasks[0]["aliases"] == {"production": 2}
    assert "production=v2" in run("tasks").output

    out = run("export", env / "exp", "sst2@production", "sst2:1").output
    assert "--lora-modules sst2-v2=" in out.replace("\n", "")
    assert (env / "exp" / "sst2-v2" / "adapter_model.safetensors").is_file()
    run("fetch", "sst2", env / "f", "--version", 3, "--base", DIGEST)
    assert (env / "f" / "adapter_config.json").is_file()

    run("deprecate", "sst2", 3)
    assert json.loads(run("show", "sst2", "--json").output)["version"] == 2
    r = run("delete", "sst2", 2, ok=False)
    assert r.exit_code == 1 and "Conflict" in r.output and "production" in r.output
    run("delete", "sst2", 3)
    assert json.loads(run("gc", "--json").output) == {"removed": 2}


def test_cli_errors_are_one_line(env):
    r = run("show", "../etc", ok=False)
    assert r.exit_code == 1 and "InvalidName" in r.output and "Traceback" not in r.output
    r = run("show", "missing", ok=False)
    assert r.exit_code == 1 and "does not exist" in r.output
    r = run("export", env / "x", "nonsense", ok=False)
    assert r.exit_code == 1 and "task:version" in r.output


def test_cli_db_option_overrides_env(env):
    db = f"sqlite:///{env / 'other.db'}"
    run("register-base", make_base(env / "base"), "--digest", DIGEST, "--db", db,
        "--blobs", (env / "ob").as_uri())
    run("publish", "t", make_adapter(env / "a", seed=1), "--base", DIGEST, "--db", db,
        "--blobs", (env / "ob").as_uri())
    assert (env / "other.db").is_file() and (env / "ob" / "sha256").is_dir()
    assert not (env / "home" / "registry" / "blobs" / "sha256").exists()
