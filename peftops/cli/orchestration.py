"""Orchestration commands of the CLI: ``fleet``, ``retrain``, ``serve`` and the DVC exports.

They run the Prefect flows of ``flows/`` (imported lazily: nothing here imports Prefect at
start-up) and print one table; a failed task makes the exit code 1 after every task has run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from peftops.cli.common import HomeOpt, JsonOpt, ParamsOpt, console, print_error, user_errors

app = typer.Typer()

MethodsOpt = typer.Option(["lora"], "--method", "-m", help="method to train, repeatable")
ConcurrencyOpt = typer.Option(2, "--max-concurrency", "-j", min=1, help="tasks run at the same time (local runner)")
RunnerOpt = typer.Option(None, "--runner", help="local (threads of this process) or ray (one task per Ray worker); "
                                                "default: params' fleet.runner, else local")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: params' fleet.address, "
                                                  "else $RAY_ADDRESS from the stack, else a private local cluster)")
CpusOpt = typer.Option(None, "--num-cpus", min=0.5, help="CPUs (and torch threads) per task on Ray")
GpusOpt = typer.Option(None, "--num-gpus", min=0, help="GPUs per task on Ray")


def _stack_env(home: Optional[Path]) -> None:
    """Point this process (and the fleet's workers) at ``peftops stack``'s services when it is up."""
    from peftops.config import state_home
    from stack import load_env

    load_env(state_home(home))


def _fleet_cfg(runner, address, num_cpus, num_gpus) -> dict:
    return {k: v for k, v in {"runner": runner, "address": address, "num_cpus": num_cpus,
                              "num_gpus": num_gpus}.items() if v is not None}


def _report_table(report: dict) -> Table:
    t = Table(title=f"fleet: {len(report['tasks'])} tasks in {report['seconds']:.1f}s")
    for col in ("task", "status", "trained", "cache hits", "registry", "score", "seconds", "retried", "error"):
        t.add_column(col)
    for name, o in report["tasks"].items():
        ok = o["status"] == "completed"
        hits = sum(o.get("cached", {}).values()) if ok else 0
        rows = {r["method"]: r for r in o.get("rows", [])}
        score = " ".join(f"{m}={r['score']:.3f}" for m, r in rows.items() if m != "base") if ok else ""
        reg = o.get("registry") or {}
        t.add_row(name, o["status"], ",".join(o.get("trained", [])) or "-", f"{hits}/{len(o.get('cached', {}))}",
                  f"v{reg['version']}" if reg else "-", score, f"{o['seconds']:.1f}",
                  "; ".join(o.get("retried", [])) or "-", o.get("error", ""))
    return t


def _run_fleet(call, home: Optional[Path], as_json: bool) -> None:
    """Run a fleet-shaped flow (``return_state=True``), print its report, exit 1 when it failed."""
    from flows.fleet import REPORT
    from peftops.config import state_home

    state = call()
    path = state_home(home) / REPORT
    report = json.loads(path.read_text()) if path.exists() else None
    if report is not None and report.get("flow_run_id") != str(state.state_details.flow_run_id):
        report = None  # an earlier run's report: this run stopped before writing one
    if as_json and report is not None:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    elif report is not None:
        if "affected" in report:
            if not report["affected"]:
                console.print(f"nothing to retrain: no task is affected by the changes since {report['since']}")
            for t, why in report["affected"].items():
                console.print(f"{t}: " + "; ".join(why))
        if report["tasks"]:
            console.print(_report_table(report))
    if not state.is_completed():
        print_error(state.message)
        raise typer.Exit(1)


@app.command("fleet")
@user_errors
def fleet(task: list[str] = typer.Option([], "--task", "-t", help="task to run, repeatable (default: all)"),
          method: list[str] = MethodsOpt, params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
          max_concurrency: int = ConcurrencyOpt, runner: Optional[str] = RunnerOpt,
          address: Optional[str] = AddressOpt, num_cpus: Optional[float] = CpusOpt,
          num_gpus: Optional[float] = GpusOpt, as_json: bool = JsonOpt) -> None:
    """Run the pipeline for many tasks of the manifest; unchanged tasks are cache hits."""
    from flows.fleet import fleet as fleet_flow
    from peftops.config import fleet_config

    _stack_env(home)
    p = _load(params)
    cfg = fleet_config(getattr(p, "fleet", None), **_fleet_cfg(runner, address, num_cpus, num_gpus))
    _run_fleet(lambda: fleet_flow(tasks=task or None, methods=method, params=p,
                                  home=str(home) if home else None, max_concurrency=max_concurrency,
                                  fleet_cfg=cfg, return_state=True), home, as_json)


def _load(params: Optional[Path]):
    from peftops.config import load_params

    return load_params(str(params) if params else None)


@app.command("retrain")
@user_errors
def retrain(since: str = typer.Option(..., "--since", help="git revision to compare the working tree with"),
            repo: Path = typer.Option(Path("."), "--repo", help="the git repository"),
            method: list[str] = MethodsOpt, params: Optional[Path] = ParamsOpt, home: Optional[Path] = HomeOpt,
            data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="data root (default: params' "
                                                    "data.data_root, $PEFTOPS_DATA_ROOT or ../shared/data)"),
            max_concurrency: int = ConcurrencyOpt, dry_run: bool = typer.Option(False, "--dry-run",
                                                                               help="only list affected tasks"),
            runner: Optional[str] = RunnerOpt, address: Optional[str] = AddressOpt,
            as_json: bool = JsonOpt) -> None:
    """Retrain exactly the tasks whose data, manifest entry, parameters or code changed since SINCE."""
    from flows.fleet import retrain as retrain_flow

    _stack_env(home)
    _run_fleet(lambda: retrain_flow(since=since, repo=str(repo), methods=method,
                                    params_file=str(params) if params else None, home=str(home) if home else None,
                                    max_concurrency=max_concurrency, data_dir=str(data_dir) if data_dir else None,
                                    dry_run=dry_run, runner=runner, address=address, return_state=True), home, as_json)


@app.command("serve")
@user_errors
def serve(file: Path = typer.Option(Path("prefect.yaml"), "--file", "-f", help="the deployments file"),
          name: list[str] = typer.Option([], "--name", "-n", help="deployment to serve, repeatable (default: all)"),
          limit: int = typer.Option(1, "--limit", min=1, help="flow runs at the same time")) -> None:
    """Serve prefect.yaml's deployments on their schedules (needs a Prefect server: PREFECT_API_URL)."""
    from flows.serve import NoServer, serve as serve_deployments
    from peftops.errors import PeftopsError

    try:
        serve_deployments(file, name or None, limit)
    except NoServer as err:
        raise PeftopsError(str(err)) from None


@app.command("export-loss")
@user_errors
def export_loss(task: str = typer.Option(..., "--task", "-t"), method: str = typer.Option("lora", "--method", "-m"),
                home: Optional[Path] = HomeOpt, out: Path = typer.Option(..., "--out", help="CSV file to write")) -> None:
    """Write a run's per-step loss as CSV (for `dvc plots`)."""
    from peftops.data.dvc import write_loss_plot
    from peftops.stages import Layout

    write_loss_plot(Layout.of(home).run(task, method), out)


@app.command("export-metrics")
@user_errors
def export_metrics(task: str = typer.Option(..., "--task", "-t"), method: str = typer.Option("lora", "--method", "-m"),
                   home: Optional[Path] = HomeOpt, out: Path = typer.Option(..., "--out", help="JSON file to write")
                   ) -> None:
    """Write a run's dev metrics and training cost as JSON (for `dvc metrics show`)."""
    from peftops.data.dvc import write_metrics
    from peftops.stages import Layout

    write_metrics(Layout.of(home).run(task, method), out)
