"""`gradiag`: the command line, built with typer."""

from collections.abc import Callable
from typing import Annotated

import typer

import service
from service.cli import calls, serving


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"gradiag {service.__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Gradient diagnostics: serve the API, or diagnose, compare, sweep and plot requests
    with a server (--server, GRADIAG_URL) or in this process."""


def create_cli() -> typer.Typer:
    cli = typer.Typer(
        name="gradiag",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    cli.callback()(_root)
    commands: tuple[Callable[..., None], ...] = (
        calls.diagnose,
        calls.compare,
        calls.sweep,
        calls.plot,
        calls.capabilities,
        serving.serve,
        serving.worker,
        serving.openapi,
    )
    for command in commands:
        cli.command()(command)
    return cli


def main(argv: list[str] | None = None) -> None:
    create_cli()(args=argv, prog_name="gradiag")
