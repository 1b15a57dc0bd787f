"""The `mlps` command: the server commands (serve, api, worker, migrate, keys) and the client commands
(datasets, jobs, models, predict, search) under one name. This is the one module that imports both sides."""

from typing import Annotated

import typer

from service.client import cli as client_commands
from service.client.cli import search as search_commands
from service.server import commands as server_commands

app = typer.Typer(help="MLP Service: train PyTorch multilayer perceptrons over HTTP.", no_args_is_help=True,
                  add_completion=False)


def _version(value: bool) -> None:
    if value:
        from service import __version__

        typer.echo(f"mlps {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit")] = False) -> None:
    """MLP Service: train PyTorch multilayer perceptrons over HTTP."""


for side in (server_commands.app, client_commands.app):
    app.registered_commands.extend(side.registered_commands)
    app.registered_groups.extend(side.registered_groups)
app.add_typer(search_commands.app, name="search")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
