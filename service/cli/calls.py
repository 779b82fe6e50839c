"""The client commands: a request file in, a report out (a table, or `--json`). Exit codes:
0 healthy (or no verdict in `--fail-on`), 1 a verdict in `--fail-on`, 2 a usage error or a
problem the server answered, 3 the server unreachable."""

from pathlib import Path
from typing import Annotated

import typer

from service.cli import render
from service.cli.calling import (
    DEFAULT_FAIL_ON,
    connected,
    exit_on,
    fail,
    fail_on,
    progress_bar,
    read_request,
    show,
    stderr,
)
from service.schemas.requests import Thresholds

File = Annotated[str, typer.Argument(help="the request as JSON; -: stdin")]
Server = Annotated[
    str | None,
    typer.Option(
        "--server", metavar="URL", help="the server; default: GRADIAG_URL, else in this process"
    ),
]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="default: GRADIAG_API_KEY")]
AsJson = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
FailOn = Annotated[
    str,
    typer.Option(
        "--fail-on",
        metavar="VERDICTS",
        help="comma-separated verdicts that exit 1 (`none`: never)",
    ),
]
IMAGE_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}


def diagnose(
    file: File,
    server: Server = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
    failing: FailOn = DEFAULT_FAIL_ON,
) -> None:
    """Diagnose one model: the diagnosis, then one row per layer."""
    verdicts = fail_on(failing)
    request = read_request(file)
    with connected(server, api_key) as client:
        report = client.diagnose(request)
    thresholds = Thresholds.model_validate(request.get("thresholds") or {}, strict=False)
    show(report, as_json, lambda r: render.diagnostics(r, thresholds))
    exit_on([report["diagnosis"]["verdict"]], verdicts)


def compare(
    file: File,
    server: Server = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
    failing: FailOn = DEFAULT_FAIL_ON,
) -> None:
    """Diagnose variants of a model side by side; fails where any variant's verdict does."""
    verdicts = fail_on(failing)
    request = read_request(file)
    with connected(server, api_key) as client:
        report = client.compare(request)
    show(report, as_json, render.compare)
    exit_on([run["diagnosis"]["verdict"] for run in report["runs"].values()], verdicts)


def sweep(
    file: File,
    server: Server = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
    failing: FailOn = DEFAULT_FAIL_ON,
) -> None:
    """Run a sweep as a job, with a progress bar; one row per run (and across seeds)."""
    verdicts = fail_on(failing)
    request = read_request(file)
    # Submitted as a job: its problems are located under the job's `request`.
    with connected(server, api_key, ("body", "request")) as client, progress_bar("sweep") as bar:
        report = client.sweep(request, progress=bar)
    base = request.get("base") or {}
    thresholds = Thresholds.model_validate(base.get("thresholds") or {}, strict=False)
    show(report, as_json, lambda r: render.sweep(r, thresholds))
    exit_on([run["verdict"] for run in report["runs"]], verdicts)


def plot(
    file: File,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="the image: .svg or .png", dir_okay=False)
    ],
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Draw the chart of a diagnostics, compare or sweep request into an image file."""
    media_type = IMAGE_TYPES.get(output.suffix.lower())
    if media_type is None:
        raise typer.BadParameter("the file must end in .svg or .png", param_hint="--output")
    request = read_request(file)
    with connected(server, api_key) as client:
        image = client.plot(request, media_type)
    try:
        output.write_bytes(image)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    stderr().print(f"wrote {output} ({len(image):,} bytes)", highlight=False)


def capabilities(server: Server = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """What the server can do: model kinds, layer types, devices, limits."""
    with connected(server, api_key) as client:
        found = client.capabilities()
    if as_json:
        show(found.model_dump(mode="json"), True, render.capabilities)
    else:
        show(found, False, render.capabilities)
