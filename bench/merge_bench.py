# .venv/bin/python bench/merge_bench.py [--task rte] [--precision bf16] [--repeats 2] [--home DIR] [--after-evaluation]
"""What the merge certificate costs on a real task's probes: ``merge_adapter`` on Gemma 3 270M with an
r=16 LoRA on every linear layer whose ``B`` is random (the cost is the shapes', not the values'),
certified on the first ``merge.probe_size`` (64) prepared dev prompts of ``--task``, as a fleet task's
merge stage does. One torch thread. Prints each repeat's ``merge_time_s`` and, as the last line, one
JSON object with the median and the probes' token counts (real, and padded as batched).

``--after-evaluation``: each repeat first evaluates the adapter on the dev split as the evaluation
stage does for a mergeable adapter (``evaluate(probe_rows=probe_size)``, which leaves the
adapter-applied probe logits for the merge), then merges; the JSON adds the evaluations' median
time, and ``--after-evaluation plain`` evaluates without handing anything over (the peer of that
evaluation time)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    """Tokens the forward passes process: each batch of row indices padded to its longest row."""
    return sum(max(lengths[i] for i in rows) * len(rows) for rows in batches)


def main() -> None:
    import torch

    from peftops.config import DataConfig, MergeConfig, load_params, state_home
    from merge_bf16_probe import save_random_lora
    from peftops.data.prepared import load_prepared, prepare
    from peftops.evaluation.merge import merge_adapter
    from peftops.model.snapshot import load_tokenizer
    from peftops.stages import stage_base
    from peftops.training.batching import shortest_first

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rte")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--home", default=None)
    ap.add_argument("--after-evaluation", nargs="?", const="handover", choices=("handover", "plain"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(None)
    snap = stage_base(params, args.home)
    data_dir = state_home(args.home) / "bench" / f"merge-{args.task}"
    prepared = prepare(DataConfig(task=args.task, train_size=params.data.train_size,
                                  dev_size=params.data.dev_size), load_tokenizer(snap), data_dir)
    probe = load_prepared(prepared.dev_path)
    cfg = MergeConfig()
    lengths = [len(p) for p in probe.input_ids[: cfg.probe_size]]
    times, eval_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        save_random_lora(snap, Path(tmp))
        for i in range(args.repeats):
            if args.after_evaluation:
                eval_times.append(evaluate_first(snap, Path(tmp), probe, cfg, args.precision,
                                                 args.after_evaluation == "handover"))
            cert = merge_adapter(snap, Path(tmp), probe, cfg, precision=args.precision)
            times.append(cert.merge_time_s)
            print(f"repeat {i}: merge {cert.merge_time_s:.1f} s, max |dlogit| {cert.max_abs_dlogit:.3g}, "
                  f"passed {cert.passed}, adapter side from {cert.adapter_logits_from}"
                  + (f", evaluation before it {eval_times[-1]:.1f} s" if eval_times else ""), flush=True)
    in_order = [list(range(s, min(s + 16, len(lengths)))) for s in range(0, len(lengths), 16)]
    print(json.dumps({"task": args.task, "precision": args.precision, "probes": len(lengths),
                      "merge_time_s": round(statistics.median(times), 2), "repeats": times, "tokens": sum(lengths),
                      "after_evaluation": args.after_evaluation,
                      "eval_time_s": round(statistics.median(eval_times), 2) if eval_times else None,
                      "padded_tokens_dev_order": padded_tokens(lengths, in_order),
                      "padded_tokens_sorted": padded_tokens(lengths, shortest_first(lengths, 16))}))


def evaluate_first(snap, adapter, probe, cfg, precision: str, handover: bool) -> float:
    """The evaluation stage's work on ``adapter`` (seconds): the dev split scored in ``precision``,
    the first probe_size prompts batched as the certificate batches them when ``handover``, their
    logits then left for the merge (as ``peftops.stages.stage_evaluate`` does)."""
    from peftops.evaluation.evaluate import evaluate
    from peftops.evaluation.merge import PROBE_BATCH, keep_adapter_logits
    from peftops.model.snapshot import pad_token_id
    from peftops.stages import load_adapted
    import torch

    model = load_adapted(snap, "lora", adapter, torch.device("cpu"), precision)
    ev = evaluate(model, probe, pad_id=pad_token_id(snap), batch_size=PROBE_BATCH, precision=precision,
                  probe_rows=cfg.probe_size if handover else 0)
    keep_adapter_logits(ev.probe_logits, snap.digest, adapter, probe.digest, precision, torch.device("cpu"))
    return ev.eval_time_s


if __name__ == "__main__":
    main()
