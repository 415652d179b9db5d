"""``peftops stack up | down | status``: the fleet's shared services on this machine.

PostgreSQL (an existing server; the stack creates its databases), moto's S3 server, an MLflow
tracking server, a Prefect API server and a Ray head, all on 127.0.0.1 (``stack.services``). Their
addresses go to ``<state dir>/stack.env``, which ``peftops fleet`` reads when it is there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from peftops.cli.common import HomeOpt, JsonOpt, console, user_errors

stack_app = typer.Typer(help="The fleet's shared services on this machine (loopback only).", no_args_is_help=True)


def _home(home: Optional[Path]) -> Path:
    from peftops.config import state_home

    return state_home(home)


@stack_app.command("up")
@user_errors
def up(home: Optional[Path] = HomeOpt,
       postgres: str = typer.Option("postgresql://postgres@127.0.0.1:5432/postgres", "--postgres",
                                    help="an existing PostgreSQL server (the stack creates its databases there)"),
       name: str = typer.Option("peftops", "--name", help="prefix of the stack's databases and buckets"),
       workers: int = typer.Option(2, "--workers", "-w", min=1, help="Ray worker processes (tasks at a time)"),
       cpus: float = typer.Option(1.0, "--cpus-per-worker", min=0.5, help="CPUs per worker (= per fleet task)"),
       as_json: bool = JsonOpt) -> None:
    """Start PostgreSQL databases, S3, MLflow, Prefect and Ray on 127.0.0.1 and write stack.env."""
    from peftops.errors import PeftopsError
    from stack import StackError, StackSpec, up as stack_up

    try:
        state = stack_up(StackSpec(home=str(_home(home)), postgres=postgres, name=name, workers=workers,
                                   cpus_per_worker=cpus))
    except StackError as err:
        raise PeftopsError(str(err)) from None
    if as_json:
        sys.stdout.write(json.dumps(state["env"], indent=2) + "\n")
        return
    _print_status(_home(home))
    console.print(f"run a fleet on it: peftops fleet --runner ray --home {_home(home)} "
                  f"--num-cpus {cpus:g}", markup=False)


@stack_app.command("down")
@user_errors
def down(home: Optional[Path] = HomeOpt) -> None:
    """Stop the stack's services and drop its databases (the S3 endpoint keeps objects in memory)."""
    from stack import down as stack_down

    console.print("stack stopped" if stack_down(_home(home)) else f"no stack recorded under {_home(home)}",
                  markup=False)


def _print_status(home: Path) -> dict:
    from stack import status as stack_status

    st = stack_status(home)
    t = Table(title=f"stack under {home}: {'up' if st['up'] else 'down'}")
    for col in ("service", "up", "pid", "url", "log"):
        t.add_column(col)
    for name, s in st["services"].items():
        t.add_row(name, "yes" if s["up"] else "no", str(s["pid"]), s["url"], s["log"])
    console.print(t)
    return st


@stack_app.command("status")
@user_errors
def status(home: Optional[Path] = HomeOpt, as_json: bool = JsonOpt) -> None:
    """Which services are up (exit code 1 when the stack is not fully up)."""
    from stack import status as stack_status

    if as_json:
        st = stack_status(_home(home))
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
    else:
        st = _print_status(_home(home))
    if not st["up"]:
        raise typer.Exit(1)
