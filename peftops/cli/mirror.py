"""``peftops mlflow-mirror``: make MLflow's Model Registry match our registry, at any time.

The pipeline does the same after each publish when ``tracking.mirror_registry`` is on; this
command catches MLflow up after a failed mirror, a ``peftops publish``, an alias moved with
``peftops registry alias`` or a version deleted. Our registry is only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from peftops.cli.common import HomeOpt, JsonOpt, console, emit, print_error, user_errors

app = typer.Typer()


@app.command("mlflow-mirror")
@user_errors
def mlflow_mirror(task: list[str] = typer.Option([], "--task", "-t", help="task to mirror, repeatable (default: "
                                                                          "every task in the registry)"),
                  home: Optional[Path] = HomeOpt,
                  tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                                             "(default: $MLFLOW_TRACKING_URI, else the state "
                                                             "directory's store)"),
                  experiment: Optional[str] = typer.Option(None, "--experiment", help="experiment of the runs that "
                                                           "log versions MLflow has no model of yet (default: "
                                                           "peftops-<task>, the pipeline's)"),
                  as_json: bool = JsonOpt) -> None:
    """Mirror registry versions and aliases into MLflow's Model Registry (model peftops-<task>)."""
    from registry import Registry

    from peftops.config import state_home
    from peftops.pipeline.mirror import all_tasks, mirror_task
    from peftops.pipeline.tracking import Tracker
    from peftops.stages import registry_locations
    from stack import load_env

    load_env(state_home(home))  # the registry and MLflow of `peftops stack`, when it is up
    results, failed = [], False
    with Registry.open(**registry_locations(home)) as reg:
        for name in task or all_tasks(reg):
            try:
                reg.get_task(name)  # a task we do not have is an error, not an empty MLflow model
                tracker = Tracker(experiment=experiment or f"peftops-{name}", tracking_uri=tracking_uri, home=home)
                results.append({"task": name, **mirror_task(tracker, reg, name).to_dict(), "error": None})
            except Exception as err:  # the other tasks are still mirrored; exit code 1 at the end
                partial = getattr(err, "report", None)  # a MirrorError: what was done regardless
                results.append({"task": name, **(partial.to_dict() if partial else {}), "error": str(err)})
                if not as_json:
                    print_error(f"{name}: {err}")
                failed = True
    if as_json:
        emit(results, True)
    elif any("model_name" in r for r in results):
        console.print(_table([r for r in results if "model_name" in r]))
    elif not failed:
        console.print("the registry has no tasks: nothing to mirror")
    if failed:
        raise typer.Exit(1)


def _table(results: list[dict]) -> Table:
    table = Table(title="MLflow Model Registry mirror")
    for col in ("task", "MLflow model", "new versions", "removed", "aliases"):
        table.add_column(col)
    for r in results:
        table.add_row(r["task"], r["model_name"], ", ".join(f"v{n}" for n in r["created"]) or "none",
                      ", ".join(f"v{n}" for n in r["removed"]) or "none",
                      ", ".join(f"{a}=v{n}" for a, n in sorted(r["aliases"].items())) or "none")
    return table
