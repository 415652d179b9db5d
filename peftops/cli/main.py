# peftops --help
"""The ``peftops`` command: the app, with the commands of each area added to it. Entry point
only; the commands live in ``stages``, ``reports`` and ``orchestration`` beside this file."""

from __future__ import annotations

from peftops.pipeline.env import apply_defaults

apply_defaults()  # offline and quiet, before anything imports the hub or tracking libraries

import typer  # noqa: E402

from peftops.cli import orchestration, reports, stages  # noqa: E402
from peftops.cli.stack import stack_app  # noqa: E402
from registry.cli import registry_app  # noqa: E402

app = typer.Typer(help="Cheap, safe, tracked PEFT on one pinned base model.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
for area in (stages.app, reports.app, orchestration.app):
    for command in area.registered_commands:
        app.registered_commands.append(command)
app.add_typer(stages.base_app, name="base")
app.add_typer(registry_app, name="registry")
app.add_typer(stack_app, name="stack")


if __name__ == "__main__":
    app()
