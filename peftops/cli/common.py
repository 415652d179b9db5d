"""What every CLI command shares: the consoles, the one-line error printing, the shared options."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from peftops.errors import PeftopsError

# Wide enough for the comparison table when output goes to a log rather than a terminal. User text
# (task names, labels, aliases, error messages quoting them) prints literally: no markup, no emoji.
console = Console(width=None if sys.stdout.isatty() else 140, markup=False, emoji=False, highlight=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False)

ParamsOpt = typer.Option(None, "--params", "-p", help="params.yaml (default: embedded defaults)")
HomeOpt = typer.Option(None, "--home", help="state directory (default: $PEFTOPS_HOME or ./.peftops)")
TaskOpt = typer.Option(None, "--task", "-t", help="a task of the manifest (default: params' data.task)")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON")


def print_error(message: object) -> None:
    """One line on stderr: a bold red ``error:`` and the message, printed literally."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(message)), soft_wrap=True)


def user_errors(fn):
    """Turn user-caused errors into one clear line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PeftopsError as err:
            print_error(err)
            raise typer.Exit(1) from None
        except Exception as err:  # registry errors are user errors too
            if type(err).__module__.startswith("registry") and err.__class__.__name__.endswith("Error"):
                print_error(err)
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
