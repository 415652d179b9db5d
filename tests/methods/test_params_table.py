"""`peftops params`: counts measured on a meta-device model equal those of a real instantiated
model, and the Gemma 3 270M figures match the arithmetic of its shapes."""

import json

import pytest
from typer.testing import CliRunner

from methods_cases import tiny_wide
from peftops.methods import get_method, make_config
from peftops.reports.params_table import ROWS, REFERENCE_CONFIG, format_table, load_config, measure, parameter_table
from peftops.model.params import count_params


def test_meta_counts_equal_counts_on_a_real_model():
    config = tiny_wide().config
    for row in parameter_table(config, model_name="tiny"):
        real = get_method(row.method).apply(tiny_wide(), make_config(row.method, row.config))
        assert row.trainable == count_params(real, trainable_only=True), row.label
        assert row.params == count_params(tiny_wide())


def _lora(r, names):
    c = REFERENCE_CONFIG
    d, ff, q, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c["head_dim"], \
        c["num_key_value_heads"] * c["head_dim"]
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
              "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}
    return c["num_hidden_layers"] * r * sum(sum(shapes[n]) for n in names)


@pytest.mark.parametrize("label,method,values,expected", [
    ("lora q,v r=8", "lora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}, _lora(8, ["q_proj", "v_proj"])),
    ("lora all r=16", "lora", {"r": 16}, _lora(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                    "up_proj", "down_proj"])),
    ("prompt 20", "prompt", {"num_virtual_tokens": 20}, 20 * 640),
    ("prefix 20", "prefix", {"num_virtual_tokens": 20}, 20 * 18 * 2 * 256),  # one KV head of 256 per layer
    ("bitfit", "bitfit", {}, 18 * (1024 + 256 + 256 + 640 + 2048 + 2048 + 640) + 18 * (4 * 640 + 2 * 256) + 640),
])
def test_gemma3_270m_counts_match_the_arithmetic(label, method, values, expected):
    base, trainable = measure(load_config(), method, values)
    assert base == 268_098_176
    assert trainable == expected
    if label == "lora q,v r=8":
        assert trainable == 368_640
    if label == "lora all r=16":
        assert trainable == 3_796_992


def test_cli_prints_the_layout_and_json(tmp_path):
    from peftops.cli.main import app

    cfg = tmp_path / "config.json"
    tiny_wide().config.to_json_file(str(cfg))
    runner = CliRunner()
    out = runner.invoke(app, ["params", "--home", str(tmp_path / "h"), "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    header = next(line for line in out.output.splitlines() if "Model" in line)
    cells = [h.strip() for h in header.strip("┃│ ").split("┃")]
    assert cells == ["Model", "Params", "Rank", "Trainable", "% Original"]
    assert "LoRA all linear" in out.output
    out = runner.invoke(app, ["params", "--json", "--home", str(tmp_path / "h"), "--config", str(cfg)])
    data = json.loads(out.output)
    assert len(data["rows"]) == len(ROWS)
    assert {r["method"] for r in data["rows"]} == {"full", "lora", "adapter", "bitfit", "prompt", "prefix"}
    assert [r["rank"] for r in data["rows"] if r["label"] == "LoRA q,v"] == ["8", "16", "64"]
    assert "Trainable" in format_table(parameter_table(tiny_wide().config))
