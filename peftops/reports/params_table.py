"""Trainable-parameter counts of every method on Gemma 3 270M, measured, not estimated.

Each row builds the model from its config on the ``meta`` device (shapes only, no weights, no
memory), applies the method exactly as training does and counts the parameters that require a
gradient; tied tensors (Gemma ties the LM head to the input embedding) count once. The
architecture comes from the pinned snapshot's ``config.json`` when there is one, else from the
reference configuration embedded below (the same numbers).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from peftops.methods import get_method, make_config
from peftops.model.params import count_params

# Gemma 3 270M's architecture (the fields that shape the parameter count), as in the snapshot.
REFERENCE_CONFIG: dict[str, Any] = {
    "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
    "tie_word_embeddings": True, "attention_bias": False, "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3, "max_position_embeddings": 32768,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}

QV = ["q_proj", "v_proj"]

# (method label, method, config values, rank column)
ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("Full fine-tuning", "full", {}, "-"),
    *[("LoRA q,v", "lora", {"r": r, "alpha": 2 * r, "target_modules": QV}, str(r)) for r in (8, 16, 64)],
    *[("LoRA all linear", "lora", {"r": r, "alpha": 2 * r}, str(r)) for r in (8, 16, 64)],
    ("DoRA all linear", "lora", {"r": 16, "alpha": 32, "use_dora": True}, "16"),
    ("Houlsby adapter (+norms)", "adapter", {"bottleneck": 64}, "m=64"),
    ("BitFit (+norms)", "bitfit", {}, "-"),
    ("Prompt tuning", "prompt", {"num_virtual_tokens": 20}, "20 tok"),
    ("Prefix tuning", "prefix", {"num_virtual_tokens": 20}, "20 tok"),
]


@dataclass
class ParamRow:
    """One line of the table."""

    model: str
    method: str
    label: str
    config: dict[str, Any]
    params: int
    rank: str
    trainable: int
    pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None):
    """A ``Gemma3TextConfig`` from ``path`` (a config.json), else the embedded reference."""
    from transformers import AutoConfig, Gemma3TextConfig

    if path is not None:
        return AutoConfig.from_pretrained(str(Path(path).parent if Path(path).is_file() else path))
    return Gemma3TextConfig(**REFERENCE_CONFIG)


def meta_model(config) -> torch.nn.Module:
    """The causal LM for ``config`` with every tensor on the meta device (shapes only)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
    return model


def measure(config, method: str, values: dict[str, Any]) -> tuple[int, int]:
    """(base parameters, trainable parameters) of ``method`` applied to a fresh model for ``config``."""
    model = meta_model(config)
    base = count_params(model)
    m = get_method(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = m.apply(model, make_config(method, values))
    return base, count_params(adapted, trainable_only=True)


def parameter_table(config=None, model_name: str = "Gemma 3 270M") -> list[ParamRow]:
    """Every row of ``ROWS`` measured on ``config`` (default: the reference Gemma 3 270M)."""
    config = config if config is not None else load_config()
    rows = []
    for label, method, values, rank in ROWS:
        base, trainable = measure(config, method, values)
        rows.append(ParamRow(model=model_name, method=method, label=label, config=dict(values), params=base,
                             rank=rank, trainable=trainable, pct=100.0 * trainable / base))
    return rows


def human(n: int) -> str:
    """268098176 -> '268.1M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def format_table(rows: list[ParamRow]) -> str:
    """Plain-text table: ``Model | Params | Rank | Trainable | % Original``."""
    head = ["Model", "Params", "Rank", "Trainable", "% Original"]
    body = [[f"{r.model} · {r.label}", human(r.params), r.rank, f"{r.trainable:,}", f"{r.pct:.3f}%"] for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    align = ["<", ">", ">", ">", ">"]
    lines = [" | ".join(f"{c:{a}{w}}" for c, a, w in zip(head, align, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)) for row in body]
    return "\n".join(lines)


def to_json(rows: list[ParamRow], source: str) -> str:
    """The table as JSON: ``{"config_source": ..., "rows": [...]}``."""
    return json.dumps({"config_source": source, "rows": [r.to_dict() for r in rows]}, indent=2)
