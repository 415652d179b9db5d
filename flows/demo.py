# peftops demo        (or: python -m flows.demo)
"""The main job as a Prefect flow: pin base -> prepare -> train LoRA and FFT -> evaluate
-> merge with parity check -> publish -> one comparison table, all tracked in MLflow.
It is the shared per-task pipeline (``flows.pipeline``) with the demo's methods."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from flows.pipeline import PipelineOptions, run_pipeline
from peftops.config import PipelineParams, load_params, state_home
from peftops.fsutil import write_json_atomic


@flow(name="peftops-demo")
def demo_flow(params_file: str | None = None, home: str | None = None, progress: bool = True,
              methods: tuple[str, ...] = ("lora", "full"), params: PipelineParams | None = None,
              fresh: bool = False) -> dict[str, Any]:
    """Run the whole pipeline on one task and return the summary (also written as JSON).
    Unchanged stages are cache hits; ``fresh`` recomputes every stage."""
    opts = PipelineOptions(methods=tuple(methods), source="demo", progress=progress, refresh=fresh)
    summary = run_pipeline(params or load_params(params_file), home, opts)
    out = state_home(home) / "demo-summary.json"
    write_json_atomic(out, summary)
    summary["summary_path"] = str(out)
    return summary


if __name__ == "__main__":
    from peftops.pipeline.env import apply_defaults

    apply_defaults()
    print(json.dumps(demo_flow(), indent=2, default=str))
