# .venv/bin/python bench/merge_bench.py [--task rte] [--precision bf16] [--repeats 2] [--home DIR]
"""What the merge certificate costs on a real task's probes: ``merge_adapter`` on Gemma 3 270M with an
r=16 LoRA on every linear layer whose ``B`` is random (the cost is the shapes', not the values'),
certified on the first ``merge.probe_size`` (64) prepared dev prompts of ``--task``, as a fleet task's
merge stage does. One torch thread. Prints each repeat's ``merge_time_s`` and, as the last line, one
JSON object with the median and the probes' token counts (real, and padded as batched)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def padded_tokens(prompts: list[list[int]], batch_size: int = 16, *, sort: bool) -> int:
    """Tokens the forward passes process when ``prompts`` are batched ``batch_size`` at a time."""
    lengths = sorted(map(len, prompts)) if sort else [len(p) for p in prompts]
    return sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
               for i in range(0, len(lengths), batch_size))


def main() -> None:
    import torch

    from peftops.config import DataConfig, MergeConfig, load_params, state_home
    from peftops.data.prepared import load_prepared, prepare
    from peftops.evaluation.merge import merge_adapter
    from peftops.methods import get_method, make_config
    from peftops.model.snapshot import load_model, load_tokenizer
    from peftops.stages import stage_base

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rte")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--home", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(None)
    snap = stage_base(params, args.home)
    data_dir = state_home(args.home) / "bench" / f"merge-{args.task}"
    probe = prepare(DataConfig(task=args.task, train_size=params.data.train_size, dev_size=params.data.dev_size),
                    load_tokenizer(snap), data_dir)
    probe = load_prepared(probe.dev_path)
    cfg = MergeConfig()
    prompts = probe.input_ids[: cfg.probe_size]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        lora, lcfg = get_method("lora"), make_config("lora", {"r": 16, "alpha": 32})
        torch.manual_seed(0)
        model = lora.apply(load_model(snap), lcfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.02)
        lora.save(model, lcfg, Path(tmp))
        del model
        for i in range(args.repeats):
            cert = merge_adapter(snap, Path(tmp), probe, cfg, precision=args.precision)
            times.append(cert.merge_time_s)
            print(f"repeat {i}: merge {cert.merge_time_s:.1f} s, max |dlogit| {cert.max_abs_dlogit:.3g}, "
                  f"passed {cert.passed}", flush=True)
    print(json.dumps({"task": args.task, "precision": args.precision, "probes": len(prompts),
                      "merge_time_s": round(statistics.median(times), 2), "repeats": times,
                      "tokens": sum(map(len, prompts)), "padded_tokens_dev_order": padded_tokens(prompts, sort=False),
                      "padded_tokens_sorted": padded_tokens(prompts, sort=True)}))


if __name__ == "__main__":
    main()
