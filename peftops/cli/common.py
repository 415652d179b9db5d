"""What every CLI command shares: the consoles, the one-line error printing, the shared options."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from peftops.errors import PeftopsError

# Wide enough for the comparison table when output goes to a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)

ParamsOpt = typer.Option(None, "--params", "-p", help="params.yaml (default: embedded defaults)")
HomeOpt = typer.Option(None, "--home", help="state directory (default: $PEFTOPS_HOME or ./.peftops)")
TaskOpt = typer.Option(None, "--task", "-t", help="a task of the manifest (default: params' data.task)")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON")


def user_errors(fn):
    """Turn user-caused errors into one clear line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PeftopsError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as err:  # registry errors are user errors too
            if type(err).__module__.startswith("registry") and err.__class__.__name__.endswith("Error"):
                err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            raise

    return wrapper


def load_cli_params(path: Optional[Path], task: Optional[str] = None):
    """params.yaml (or the embedded defaults), with ``data.task`` set when ``task`` is given."""
    from peftops.config import for_task, load_params

    return for_task(load_params(path), task)


def emit(obj, as_json: bool) -> None:
    """Print ``obj`` as plain JSON (``--json``) or as highlighted JSON for a terminal."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        console.print_json(json.dumps(obj, default=str))
