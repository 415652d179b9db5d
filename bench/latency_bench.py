# .venv/bin/python bench/latency_bench.py [--task sst2] [--rounds 5] [--threads 1] [--home DIR] [--out reports/latency]
"""Inference latency: base vs merged LoRA vs unmerged LoRA vs Houlsby adapters, real model.

The lecture's latency-vs-modularity trade-off, measured: a merged LoRA has the base's exact
architecture (target: latency ratio to the base <= 1.02), an unmerged LoRA adds a low-rank
side path to every linear layer, and bottleneck adapters add serial modules to every layer.

Every variant is scored the way evaluation scores (verbalizer log-probs at the last prompt
position) on the same dev prompts, at batch 1 and 16. The variants are measured in
interleaved rounds (A B C D, B C D A, ...) so that load from other processes on a shared
machine hits them alike; each round's value is the median per-example time of several
batches, and the report gives the median over rounds and the paired per-round ratio to base.

Adapters trained by `peftops compare`/`peftops train` (runs/<task>/<method>/adapter) are used
when present; otherwise the method is applied fresh (same architecture, so the same cost).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()

import torch  # noqa: E402

from peftops import stages as P  # noqa: E402
from peftops.model.snapshot import load_model, pad_token_id  # noqa: E402
from peftops.config import for_task  # noqa: E402
from peftops.config import load_params  # noqa: E402
from peftops.data.prepared import load_prepared  # noqa: E402
from peftops.evaluation.evaluate import latency_per_example  # noqa: E402
from peftops.training.precision import keep_activation_dtype, resolve_precision, storage_dtype  # noqa: E402
from peftops.fsutil import write_json_atomic, write_text_atomic  # noqa: E402
from peftops.methods import available_methods, get_method, make_config  # noqa: E402


def build_variants(params, home, task: str, precision: str = "fp32") -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """name -> model (eval mode, CPU, stored for ``precision``) and name -> where its weights came from."""
    snap = P._snapshot(params, home)
    layout = P.Layout.of(home)
    dtype = storage_dtype(precision)
    models, origin = {"base": load_model(snap, dtype=dtype)}, {"base": "pinned base snapshot"}

    def adapted(method: str) -> tuple[torch.nn.Module, str]:
        trained = layout.run(task, method) / "adapter"
        m = get_method(method)
        if trained.exists():
            return P.load_adapted(snap, method, trained, torch.device("cpu"), precision).eval(), \
                str(trained.relative_to(layout.home))
        cfg = make_config(method, params.methods.get(method))
        model = keep_activation_dtype(m.apply(load_model(snap, dtype=dtype), cfg), precision)
        return model.eval(), f"fresh {method} ({cfg.to_dict()})"

    lora, src = adapted("lora")
    models["lora (unmerged)"], origin["lora (unmerged)"] = lora, src
    merged, src = adapted("lora")
    models["lora (merged)"] = get_method("lora").merge(merged).eval()
    origin["lora (merged)"] = src + ", merge_and_unload"
    if "adapter" in available_methods():
        models["houlsby adapter"], origin["houlsby adapter"] = adapted("adapter")
    for m in models.values():
        for p in m.parameters():
            p.requires_grad_(False)
    return models, origin


def measure(models, split, pad_id: int, batch_sizes: list[int], rounds: int, batches: dict[int, int],
            precision: str = "fp32"):
    """{name: {bs: [ms per example, one per round]}} in interleaved, rotated order."""
    names = list(models)
    out = {n: {bs: [] for bs in batch_sizes} for n in names}
    with torch.inference_mode():
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for bs in batch_sizes:
                for n in order:
                    sec = latency_per_example(models[n], split, pad_id=pad_id, batch_size=bs, n_batches=batches[bs],
                                              warmup=1, precision=precision)
                    out[n][bs].append(1000.0 * sec)
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} b{bs} {out[n][bs][-1]:.1f}" for bs in batch_sizes for n in names), flush=True)
    return out


def report(samples, batch_sizes: list[int], origin: dict[str, str]) -> tuple[dict, str]:
    """Medians, paired ratios to base, and a Markdown table."""
    res: dict = {"variants": {}}
    for n, per_bs in samples.items():
        entry = {"source": origin[n]}
        for bs in batch_sizes:
            ratios = [a / b for a, b in zip(per_bs[bs], samples["base"][bs])]
            entry[f"b{bs}"] = {"median_ms_per_example": statistics.median(per_bs[bs]),
                               "ratio_to_base": statistics.median(ratios), "rounds_ms": per_bs[bs]}
        res["variants"][n] = entry
    head = ["variant"] + [f"b{bs} ms/example" for bs in batch_sizes] + [f"b{bs} ratio to base" for bs in batch_sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, e in res["variants"].items():
        lines.append("| " + " | ".join([n] + [f"{e[f'b{bs}']['median_ms_per_example']:.1f}" for bs in batch_sizes]
                                       + [f"{e[f'b{bs}']['ratio_to_base']:.3f}" for bs in batch_sizes]) + " |")
    return res, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--params", default=None, help="params.yaml (default: embedded defaults)")
    ap.add_argument("--home", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches-b1", type=int, default=8, help="timed batches of 1 per round")
    ap.add_argument("--batches-b16", type=int, default=3, help="timed batches of 16 per round")
    ap.add_argument("--out", default=str(REPO / "reports" / "latency"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                    help="default: the run's (train.json of the LoRA run), else train.precision")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    params = for_task(load_params(args.params), args.task)
    P.stage_base(params, args.home)
    prep = P.stage_prepare(params, args.home)
    split = load_prepared(prep.dev_path)
    pad_id = pad_token_id(P._snapshot(params, args.home))
    cpu = torch.device("cpu")
    precision = (resolve_precision(args.precision, cpu) if args.precision else
                 P.run_precision(params, P.Layout.of(args.home).run(args.task, "lora"), cpu))
    models, origin = build_variants(params, args.home, args.task, precision)
    sizes = [1, 16]
    samples = measure(models, split, pad_id, sizes, args.rounds, {1: args.batches_b1, 16: args.batches_b16},
                      precision)
    res, table = report(samples, sizes, origin)
    merged = res["variants"]["lora (merged)"]
    res.update({
        "task": args.task, "dev_prompts": len(split), "rounds": args.rounds, "precision": precision,
        "timed_batches": {"b1": args.batches_b1, "b16": args.batches_b16},
        "target": "merged LoRA latency / base latency <= 1.02",
        "target_met": all(merged[f"b{bs}"]["ratio_to_base"] <= 1.02 for bs in sizes),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "python": platform.python_version(),
        "command": "python bench/latency_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": time.perf_counter() - t0,
    })
    out = Path(args.out)
    write_json_atomic(out / "latency.json", res)
    write_text_atomic(out / "latency.md", table)
    print(table)
    print(f"merged LoRA / base: " + ", ".join(f"b{bs} {merged[f'b{bs}']['ratio_to_base']:.3f}" for bs in sizes)
          + f" (target <= 1.02: {'met' if res['target_met'] else 'NOT met'}); written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
