"""What every CLI command shares: the consoles, the one-line error printing, the shared options."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from importlib.util import find_spec
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
HomeOpt = typer.Option(None, "--home", help="state directory (default: $PEFTOPS_HOME, else the nearest .peftops/ "
                                            "in this directory or a parent, else ./.peftops)")
TaskOpt = typer.Option(None, "--task", "-t", help="a task: built-in or of your manifest (default: params' data.task)")
ManifestOpt = typer.Option(None, "--manifest", help="a task manifest of yours; it extends the built-in tasks "
                                                    "(overrides params' data.manifest)")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON")

# Libraries that print progress bars and warnings of their own; quiet unless -v.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
              "MLFLOW_LOGGING_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore"}
_QUIET_LOGGERS = ("transformers", "peft", "prefect", "mlflow", "alembic", "httpx", "urllib3", "torch")


def set_verbosity(verbose: bool) -> None:
    """Quiet by default: no library progress bars, warnings or info logs (a setting already in
    the environment wins); ``verbose`` leaves the libraries as they are."""
    if verbose:
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    warnings.filterwarnings("ignore")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def method_names() -> list[str]:
    """The method packages under ``peftops/methods/`` (each registers one method), found without
    importing them, so that ``--help`` stays fast."""
    spec = find_spec("peftops.methods")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(d.name for r in roots for d in r.iterdir() if (d / "method.py").is_file())


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


def _method(value: str) -> str:
    """``--method``: one of the registered methods; anything else is one line and exit code 1."""
    names = method_names()
    if value not in names:
        print_error(f"unknown method {value!r}; choose one of {', '.join(names)}")
        raise typer.Exit(1)
    return value


def method_option(default: Optional[str] = "lora", help: str = "the PEFT method") -> typer.models.OptionInfo:
    """The ``--method/-m`` option: its choices are the registered methods (shown in --help, completed by the
    shell)."""
    names = method_names()
    return typer.Option(default, "--method", "-m", parser=_method, metavar="[" + "|".join(names) + "]",
                        autocompletion=lambda: names, help=help)


def load_cli_params(path: Optional[Path], task: Optional[str] = None, manifest: Optional[Path] = None):
    """params.yaml (or the embedded defaults), with ``data.task`` set when ``task`` is given and
    ``data.manifest`` when ``manifest`` is."""
    from peftops.config import for_task, load_params

    p = for_task(load_params(path), task)
    if manifest is not None:
        if not Path(manifest).is_file():
            from peftops.errors import ConfigError

            raise ConfigError("--manifest", f"{manifest} is not a file")
        p = p.model_copy(update={"data": p.data.model_copy(update={"manifest": str(Path(manifest).resolve())})})
    return p


def emit(obj, as_json: bool) -> None:
    """Print ``obj`` as plain JSON (``--json``) or as highlighted JSON for a terminal."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        console.print_json(json.dumps(obj, default=str))
