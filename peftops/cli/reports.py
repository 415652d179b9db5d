"""The report commands: ``compare`` (every method at one budget), ``params`` (trainable
parameters of each method) and ``demo`` (the main job as one Prefect flow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from peftops.cli.common import HomeOpt, ParamsOpt, TaskOpt, console, emit, err_console, load_cli_params, user_errors

app = typer.Typer()


@app.command()
@user_errors
def compare(task: str = typer.Option(..., "--task", "-t", help="a task of the manifest; several: comma-separated"),
            methods: str = typer.Option("lora,adapter,bitfit,prompt,prefix,full", "--methods",
                                        help="comma-separated, or 'all'; FFT ('full') is the baseline"),
            params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
            out: Path = typer.Option(Path("reports"), "--out", help="tables and charts go to OUT/<task>/"),
            reuse: bool = typer.Option(False, help="take cache hits: stages whose inputs are unchanged since any "
                                                   "earlier run (compare, demo, fleet) are not run again"),
            threads: Optional[int] = typer.Option(None, help="torch threads (on a shared CPU, 1 is often fastest)"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Train every method at the same budget, evaluate against FFT, measure cost, latency, forgetting."""
    from flows.compare import run_compare
    from peftops.reports.compare import CompareConfig, parse_methods
    from peftops.reports.comparison_files import write_summary
    from peftops.reports.tables import compare_rich_table

    p = load_cli_params(params)
    command = "peftops " + " ".join(sys.argv[1:])
    results = []
    for t in [x.strip() for x in task.split(",") if x.strip()]:
        cfg = CompareConfig(task=t, methods=parse_methods(methods), out_dir=str(out), reuse=reuse, command=command,
                            threads=threads)
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
def params_table(home: Optional[Path] = HomeOpt, as_json: bool = typer.Option(False, "--json"),
                 config: Optional[Path] = typer.Option(None, help="a model config.json (default: the pinned "
                                                       "snapshot's, else the embedded Gemma 3 270M one)")) -> None:
    """Each method's trainable parameters on Gemma 3 270M: Model | Params | Rank | Trainable | % Original."""
    from peftops.reports.params_table import format_table, load_config, parameter_table, to_json
    from peftops.stages import Layout

    if config is None and (Layout.of(home).base("gemma-3-270m") / "config.json").exists():
        config = Layout.of(home).base("gemma-3-270m") / "config.json"
    rows = parameter_table(load_config(config))
    source = str(config) if config else "embedded Gemma 3 270M reference config"
    if as_json:
        sys.stdout.write(to_json(rows, source) + "\n")
    else:
        sys.stdout.write(format_table(rows) + f"\n(architecture from {source}; counts measured by applying each "
                         "method; tied embedding counted once)\n")


@app.command()
@user_errors
def demo(params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
         fresh: bool = typer.Option(False, "--fresh", help="run every stage again, even where its inputs are "
                                                            "unchanged since an earlier run (a cache hit)")) -> None:
    """The main job: pin base, prepare SST-2, train LoRA and FFT, evaluate, merge, publish."""
    from flows.demo import demo_flow
    from peftops.reports.tables import Row, rich_table

    summary = demo_flow(params_file=str(params) if params else None, home=str(home) if home else None, fresh=fresh)
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
        console.print(f"registry: {reg['task']} v{reg['version']} (adapter {reg['adapter_id'][:16]}…)")
    console.print(f"runs: {summary['mlflow']['ui']}")
    console.print(f"summary: {summary['summary_path']}")
