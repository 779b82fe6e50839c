"""What the client commands share: reading a request, reaching a server (or the service in
this process), exit codes, errors printed without a traceback, and the progress bar."""

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pydantic
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli import render
from service.client import Client, GradiagProblem
from service.config import Settings
from service.diagnostics.verdicts import SEVERITY
from service.schemas.jobs import JobProgress

OK, VERDICT, PROBLEM, UNREACHABLE = 0, 1, 2, 3
DEFAULT_FAIL_ON = "vanishing,exploding,non_finite"
_SPELLINGS = {"nonfinite": "non_finite", "non-finite": "non_finite"}


def stderr() -> Console:
    return Console(stderr=True)


def fail(message: str, code: int = PROBLEM) -> NoReturn:
    stderr().print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def fail_on(value: str) -> frozenset[str]:
    """The verdicts that exit 1: comma-separated, `none` or empty for none."""
    names = {_SPELLINGS.get(n.strip(), n.strip()) for n in value.split(",")} - {"", "none"}
    unknown = names - set(SEVERITY)
    if unknown:
        raise typer.BadParameter(
            f"unknown verdict {', '.join(sorted(unknown))} (verdicts: {', '.join(SEVERITY)})",
            param_hint="--fail-on",
        )
    return frozenset(names)


def exit_on(verdicts: Iterable[str], failing: frozenset[str]) -> None:
    """Exit 1, naming them, where any of the verdicts is one to fail on."""
    found = sorted(set(verdicts) & failing, key=SEVERITY.index)
    if found:
        option = ",".join(sorted(failing, key=SEVERITY.index))
        stderr().print(f"gradiag: {', '.join(found)} (--fail-on {option})", highlight=False)
        raise typer.Exit(VERDICT)


def read_request(file: str) -> Any:
    """The request in FILE (`-`: standard input), as JSON data."""
    name = "standard input" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read {name}: {error.strerror or error}")
    except UnicodeDecodeError as error:
        fail(f"cannot read {name}: not UTF-8 text ({error.reason})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"{name} is not JSON: {error.msg} (line {error.lineno}, column {error.colno})")


def open_client(server: str | None, api_key: str | None) -> Client:
    """A client of `server`, else of GRADIAG_URL, else of the service in this process."""
    try:
        server = server or Settings().url
        if server:
            return Client(server, api_key=api_key)
        from service.client.local import LocalClient

        return LocalClient()
    except pydantic.ValidationError as error:
        fail(f"settings: {error}")
    except RuntimeError as error:  # the in-process service did not start
        fail(f"the service did not start: {error}")


INTERRUPTED = 130  # as a shell reports Ctrl-C


@contextmanager
def connected(
    server: str | None, api_key: str | None, prefix: Sequence[str | int] = ("body",)
) -> Iterator[Client]:
    """A client for the block; its problems print as title, locations and detail (exit 2),
    an unreachable server as such (exit 3)."""
    client = open_client(server, api_key)
    try:
        with client:
            yield client
    except GradiagProblem as problem:
        stderr().print(render.problem(problem, prefix), highlight=False)
        raise typer.Exit(PROBLEM) from None
    except KeyboardInterrupt:  # not 1: that is a verdict in --fail-on
        stderr().print("interrupted", highlight=False)
        raise typer.Exit(INTERRUPTED) from None
    except httpx.TimeoutException as error:
        fail(
            f"no answer from {client.base_url} in time: {error or type(error).__name__}",
            UNREACHABLE,
        )
    except httpx.TransportError as error:
        fail(f"cannot reach {client.base_url}: {error or type(error).__name__}", UNREACHABLE)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[JobProgress], None]]:
    """A progress bar on a terminal's standard error; what updates it."""
    console = stderr()
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(progress: JobProgress) -> None:
            bar.update(task, completed=progress["done"], total=progress["total"])

        yield update


def show(report: Any, as_json: bool, table: Callable[[Any], Any]) -> None:
    """The report as JSON (`--json`), or as the table a person reads."""
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        Console().print(table(report), highlight=False)
