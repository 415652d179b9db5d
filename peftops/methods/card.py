"""What a published adapter carries for whoever serves it: a model card (``README.md``: task,
data and base digests, metrics, how to load it with peft, vLLM or peftops) and the prompt format
(``prompt.json``: the template, the field preprocessing and the label verbalizers), so that a
server prompts it exactly as it was trained. ``base_model_name_or_path`` becomes the base's name
(the training machine's path means nothing elsewhere); its digest sits beside it in the card.

Which loader reads which method: LoRA, prompt and prefix tuning are peft's own formats
(``PeftModel.from_pretrained``; vLLM serves LoRA with ``--lora-modules``); Houlsby adapters
(``peft_type: HOULSBY_ADAPTER``) and BitFit (``BITFIT``) are peftops formats that peft and vLLM
cannot load: ``peftops.methods.load_adapter`` loads every kind onto a base model, and a merged
BitFit export (``peftops merge --export``) is a plain checkpoint that loads anywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from peftops.data.manifest import TaskSpec
from peftops.fsutil import write_text_atomic

PEFT_LOADABLE = frozenset({"lora", "prompt", "prefix"})
VLLM_SERVABLE = frozenset({"lora"})
PREPROCESSING = "each field: surrounding whitespace stripped, then filled into the template"


def prompt_format(spec: TaskSpec) -> dict[str, Any]:
    """The task's prompt format: enough to render a prompt and read the answer off the model."""
    return {"task": spec.name, "template": spec.template, "fields": dict(spec.fields),
            "preprocessing": PREPROCESSING, "labels": dict(spec.labels), "metric": spec.metric,
            "answer": "the label whose verbalizer continuation has the highest log-probability after the prompt"}


def loading_notes(method: str, base_name: str, base_digest: str) -> str:
    """Markdown: how to load an adapter of ``method``, and where it does not load."""
    lines = [f"Base: `{base_name}` pinned by digest `{base_digest}` (`peftops base import` builds it)."]
    if method in PEFT_LOADABLE:
        lines += ["", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                  "base = AutoModelForCausalLM.from_pretrained(BASE_SNAPSHOT_DIR)",
                  "model = PeftModel.from_pretrained(base, ADAPTER_DIR)", "```"]
    else:
        lines += ["", f"peft and vLLM cannot load this `{method}` adapter (its `peft_type` is peftops' own). "
                  "Load it with peftops, or merge it into plain weights:", "",
                  "```python", "from peftops.methods import load_adapter",
                  "from transformers import AutoModelForCausalLM",
                  "model = load_adapter(AutoModelForCausalLM.from_pretrained(BASE_SNAPSHOT_DIR), ADAPTER_DIR)", "```"]
    if method in VLLM_SERVABLE:
        lines += ["", "```bash", "vllm serve BASE_SNAPSHOT_DIR --enable-lora --max-lora-rank 16 "
                  "--lora-modules ADAPTER_NAME=ADAPTER_DIR", "```"]
    return "\n".join(lines)


def model_card(spec: TaskSpec, method: str, base_name: str, base_digest: str, data_digest: str,
               metrics: dict[str, float], precision: str) -> str:
    """The ``README.md`` of a published adapter."""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    return "\n".join([
        f"# {spec.name} — {method} adapter", "",
        spec.description or f"A `{method}` adapter of `{base_name}` for the task `{spec.name}`.", "",
        "## Task", "",
        f"- prompt template: `{json.dumps(spec.template)[1:-1]}` ({PREPROCESSING})",
        f"- answers: {', '.join(f'`{k}` → `{json.dumps(v)[1:-1]}`' for k, v in spec.labels.items())}",
        f"- metric: {spec.metric}; the prompt format is also in `prompt.json`", "",
        "## Provenance", "",
        f"- data digest: `{data_digest}`", f"- base: `{base_name}`, digest `{base_digest}`",
        f"- trained in {precision}", "",
        "## Metrics (dev split)", "", "| metric | value |", "|---|---|", rows or "| - | - |", "",
        "## Loading", "", loading_notes(method, base_name, base_digest), "",
    ])


def portable_copy(adapter_dir: Path, out_dir: Path, spec: TaskSpec, method: str, base_name: str,
                  base_digest: str, data_digest: str, metrics: dict[str, float], precision: str) -> Path:
    """``adapter_dir`` copied to ``out_dir`` with the model card, ``prompt.json`` and a portable
    ``base_model_name_or_path``: the folder that is published (the trained one is left as it is)."""
    shutil.copytree(adapter_dir, out_dir)
    cfg_file = out_dir / "adapter_config.json"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text())
        if "base_model_name_or_path" in cfg:
            cfg["base_model_name_or_path"] = base_name
            write_text_atomic(cfg_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_text_atomic(out_dir / "prompt.json", json.dumps(prompt_format(spec), indent=2, sort_keys=True) + "\n")
    write_text_atomic(out_dir / "README.md", model_card(spec, method, base_name, base_digest, data_digest,
                                                       metrics, precision))
    return out_dir
