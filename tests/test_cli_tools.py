"""The CLI's manners: --version, --method choices in one line, the demo's registry line."""

from __future__ import annotations

from typer.testing import CliRunner

from peftops.cli.common import method_names
from peftops.cli.main import app
from peftops.cli.reports import registry_line


def test_version_and_method_choices(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("peftops ")
    assert method_names() == ["adapter", "bitfit", "full", "lora", "prefix", "prompt"]
    r = runner.invoke(app, ["train", "--method", "lorra", "--home", str(tmp_path / "h")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "unknown method 'lorra'; choose one of adapter, bitfit" in r.output
    assert not (tmp_path / "h").exists()
    r = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert "adapter|bitfit|full|" in r.output and "--manifest" in r.output


def test_the_demo_says_whether_the_version_was_promoted():
    reg = {"task": "sst2", "version": 3, "adapter_id": "ab" * 32, "aliases": ["production"]}
    assert registry_line(reg, {"promote": True, "reason": "ok"}).endswith(": promoted (production)")
    line = registry_line({**reg, "aliases": []}, {"promote": False, "reason": "89.0% of FFT is below the 95% gate"})
    assert "not promoted (89.0% of FFT is below the 95% gate)" in line
