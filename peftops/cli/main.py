# peftops --help
"""The ``peftops`` command: the app, with the commands of each area added to it. Entry point
only; the commands live in ``stages``, ``reports``, ``orchestration`` and ``mirror`` beside this file."""

from __future__ import annotations

from peftops.pipeline.env import apply_defaults

apply_defaults()  # offline and quiet, before anything imports the hub or tracking libraries

import typer  # noqa: E402

from peftops.cli import mirror, orchestration, reports, stages  # noqa: E402
from peftops.cli.common import set_verbosity  # noqa: E402
from peftops.cli.stack import stack_app  # noqa: E402
from registry.cli import registry_app  # noqa: E402

app = typer.Typer(help="Cheap, safe, tracked PEFT on one pinned base model.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"peftops {version('peftops')}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree not installed
            typer.echo("peftops (not installed)")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                            help="print the version and exit"),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="also show the libraries' progress bars, "
                                                                     "warnings and logs (quiet by default)")) -> None:
    """Cheap, safe, tracked PEFT on one pinned base model."""
    set_verbosity(verbose)


for area in (stages.app, reports.app, orchestration.app, mirror.app):
    for command in area.registered_commands:
        app.registered_commands.append(command)
app.add_typer(stages.base_app, name="base")
app.add_typer(registry_app, name="registry")
app.add_typer(stack_app, name="stack")


if __name__ == "__main__":
    app()
