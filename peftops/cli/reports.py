"""The report commands: ``compare`` (every method at one budget), ``params`` (trainable
parameters of each method) and ``demo`` (the main job as one Prefect flow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from peftops.cli.common import HomeOpt, ManifestOpt, ParamsOpt, console, emit, load_cli_params, user_errors

app = typer.Typer()


def registry_line(reg: dict, gate: Optional[dict]) -> str:
    """The demo's registry line: the version, and whether the quality gate promoted it."""
    line = f"registry: {reg['task']} v{reg['version']} (adapter {reg['adapter_id'][:16]}…)"
    aliases = reg.get("aliases") or []
    if gate is not None and gate.get("promote"):
        return line + f": promoted ({', '.join(aliases) or 'production'})"
    if gate is not None:
        return line + f": not promoted ({gate.get('reason', 'the gate refused')})" + \
            (f"; aliases: {', '.join(aliases)}" if aliases else "")
    return line + (f"; aliases: {', '.join(aliases)}" if aliases else ": no alias set")


@app.command()
@user_errors
def compare(task: str = typer.Option(..., "--task", "-t", help="a task of the manifest; several: comma-separated"),
            methods: str = typer.Option("lora,adapter,bitfit,prompt,prefix,full", "--methods",
                                        help="comma-separated, or 'all'; FFT ('full') is the baseline"),
            params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, manifest: Optional[Path] = ManifestOpt,
            out: Optional[Path] = typer.Option(None, "--out", help="tables and charts go to OUT/<task>/ "
                                                                   "(default: the state directory's reports/)"),
            reuse: bool = typer.Option(False, help="take cache hits: stages whose inputs are unchanged since any "
                                                   "earlier run (compare, demo, fleet) are not run again"),
            threads: Optional[int] = typer.Option(None, help="torch threads (on a shared CPU, 1 is often fastest)"),
            latency_batch_sizes: str = typer.Option("1,16", "--latency-batch-sizes",
                                                    help="comma-separated batch sizes the latency is timed at"),
            latency_batches: int = typer.Option(3, "--latency-batches", min=1,
                                                help="timed batches per batch size, after one warm-up (median)"),
            as_json: bool = typer.Option(False, "--json", help="print the results as JSON")) -> None:
    """Train every method at the same budget, evaluate against FFT, measure cost, latency, forgetting."""
    from flows.compare import run_compare
    from peftops.reports.compare import CompareConfig, parse_batch_sizes, parse_methods
    from peftops.reports.comparison_files import write_summary
    from peftops.config import state_home
    from peftops.reports.tables import compare_rich_table

    p = load_cli_params(params, None, manifest)
    out = out if out is not None else state_home(home) / "reports"
    command = "peftops " + " ".join(sys.argv[1:])
    results = []
    for t in [x.strip() for x in task.split(",") if x.strip()]:
        cfg = CompareConfig(task=t, methods=parse_methods(methods), out_dir=str(out), reuse=reuse, command=command,
                            threads=threads, latency_batches=latency_batches,
                            latency_batch_sizes=parse_batch_sizes(latency_batch_sizes))
        r = run_compare(p, cfg, home, progress=not as_json)
        results.append(r)
        if not as_json:
            console.print(compare_rich_table(r.rows, title=f"{t} ({r.seconds:.0f} s)"))
            console.print(f"written: {', '.join(str(f) for f in r.files.values())}")
    summary = write_summary(out)
    if as_json:
        emit([{"task": r.task, "rows": [x.to_dict() for x in r.rows], "files": {k: str(v) for k, v in r.files.items()},
                "mlflow_parent_run_id": r.parent_run_id} for r in results], True)
    elif summary:
        console.print(f"summary across tasks: {summary}")


@app.command("params")
@user_errors
def params_table(home: Optional[Path] = HomeOpt,
                 as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
                 config: Optional[Path] = typer.Option(None, help="a model config.json (default: the pinned "
                                                       "snapshot's, else the embedded Gemma 3 270M one)")) -> None:
    """Each method's trainable parameters on Gemma 3 270M: Model | Params | Rank | Trainable | % Original."""
    from rich.table import Table

    from peftops.reports.params_table import human, load_config, parameter_table, to_json
    from peftops.stages import Layout

    if config is None and (Layout.of(home).base("gemma-3-270m") / "config.json").exists():
        config = Layout.of(home).base("gemma-3-270m") / "config.json"
    rows = parameter_table(load_config(config))
    source = str(config) if config else "embedded Gemma 3 270M reference config"
    if as_json:
        sys.stdout.write(to_json(rows, source) + "\n")
        return
    t = Table(title="trainable parameters")
    for col, justify in (("Model", "left"), ("Params", "right"), ("Rank", "right"), ("Trainable", "right"),
                         ("% Original", "right")):
        t.add_column(col, justify=justify)
    for r in rows:
        t.add_row(f"{r.model} · {r.label}", human(r.params), r.rank, f"{r.trainable:,}", f"{r.pct:.3f}%")
    console.print(t)
    console.print(f"(architecture from {source}; counts measured by applying each method; tied embedding "
                  "counted once)")


@app.command()
@user_errors
def demo(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt, manifest: Optional[Path] = ManifestOpt,
         fresh: bool = typer.Option(False, "--fresh", help="run every stage again, even where its inputs are "
                                                            "unchanged since an earlier run (a cache hit)")) -> None:
    """The main job: pin base, prepare SST-2, train LoRA and FFT, evaluate, merge, publish."""
    from flows.demo import demo_flow
    from peftops.reports.tables import Row, rich_table

    summary = demo_flow(params=load_cli_params(params, None, manifest), home=str(home) if home else None,
                        fresh=fresh)
    rows = [Row(**r) for r in summary["rows"]]
    console.print(rich_table(rows, title=f"{summary['task']}: {summary['train_examples']} train / "
                                         f"{summary['dev_examples']} dev examples"))
    console.print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items()))
    mp = summary.get("merge_parity")
    if mp:
        console.print(f"merge parity: max |Δlogit| {mp['max_abs_dlogit']:.2e} (tolerance {mp['tolerance']:g}), "
                      f"mean KL {mp['mean_kl']:.2e} over {mp['n_probes']} dev prompts: "
                      f"{'PASS' if mp['passed'] else 'FAIL'}")
    reg = summary.get("registry")
    if reg:
        console.print(registry_line(reg, summary.get("gate")))
    console.print(f"runs: {summary['mlflow']['ui']}")
    console.print(f"summary: {summary['summary_path']}")
