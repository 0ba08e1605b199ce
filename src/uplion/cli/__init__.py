"""The ``uplion`` command."""

from __future__ import annotations

import typer

from uplion.cli import admin, fetch, rollout, serve

app = typer.Typer(help="uplion: serve any AI model, local or remote, behind one API.",
                  no_args_is_help=True, add_completion=False)
app.registered_commands.extend(serve.app.registered_commands)
app.registered_commands.extend(fetch.app.registered_commands)
app.add_typer(admin.app, name="admin")
app.add_typer(rollout.app, name="rollout")
app.command("status")(admin.status)


def main() -> None:
    app()
