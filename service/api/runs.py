"""What the routes that run models share: their responses, waiting for a job while watching
for the client to leave, `Prefer: respond-async`, and the report as JSON or as a chart
(`Accept`)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import Query
from starlette.requests import Request
from starlette.responses import Response

from service.api.negotiation import JSON, PNG, SVG, choose
from service.api.problems import problem_responses
from service.errors import ClientClosed, NotAcceptable
from service.plots import ImageFormat, render
from service.run_service import RunService
from service.schemas.jobs import Job, JobRequest

# What a route that runs models can answer besides 200.
RUN_ERRORS: dict[int | str, dict[str, Any]] = {
    **problem_responses(400, 401, 413, 415, 422, 429, 500, 503, 504),
    202: {"model": Job, "description": "With `Prefer: respond-async`: the job, at `Location`"},
}
IMAGES: dict[str, ImageFormat] = {SVG: "svg", PNG: "png"}
# The routes that answer a report: JSON, or its chart where `Accept` prefers an image.
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report; with `Accept: image/svg+xml` or `image/png` preferred, its "
        "gradient-flow chart (deterministic; in SVG each point's exact value is its `<title>`)",
        "content": {
            SVG: {"schema": {"type": "string", "contentMediaType": SVG}},
            PNG: {"schema": {"type": "string", "contentMediaType": PNG}},
        },
    },
    **RUN_ERRORS,
    **problem_responses(406),
}
VARY = {"Vary": "Accept"}


def answered(**examples: Any) -> dict[int | str, dict[str, Any]]:
    """REPORT_RESPONSES with the JSON 200's examples: real answers (service/api/examples)."""
    named = {name: {"summary": name.replace("_", " "), "value": v} for name, v in examples.items()}
    ok = REPORT_RESPONSES[200]
    content = {**ok["content"], "application/json": {"examples": named}}
    return {**REPORT_RESPONSES, 200: {**ok, "content": content}}


async def _disconnected(request: Request) -> None:
    # The body is read, so the next message is the client leaving (or the response ending).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it if the client disconnects first (freeing its slot)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    raise ClientClosed("the client disconnected; its run was cancelled")


def json_response(report: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(report), headers=headers, media_type=JSON)


def job_response(job: Job, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    headers = {"Location": f"/v1/jobs/{job['id']}", **(headers or {})}
    return Response(orjson.dumps(job), status, headers, media_type="application/json")


View = Annotated[
    Literal["full", "summary"],
    Query(description="`summary`: only the diagnosis and a row per layer (per run, in a compare)"),
]


def respond_async(prefer: str | None) -> bool:
    """Whether RFC 7240's `respond-async` preference is among the header's."""
    tokens = (part.split(";")[0].strip().lower() for part in (prefer or "").split(","))
    return "respond-async" in tokens


async def answer(
    request: Request,
    runs: RunService,
    job: JobRequest,
    owner: str,
    prefer: str | None,
    view: Callable[[Any], Any] | None = None,
) -> Response:
    """The synchronous routes: the result when it is ready (JSON, through `view` where
    given, or the chart of the whole report that `Accept` prefers), or the job at once if
    asked (JSON whatever `Accept` prefers)."""
    media = choose(request.headers.get("accept"))
    if media is None:  # refused before anything runs
        raise NotAcceptable(
            "Accept admits none of application/json, image/svg+xml, image/png", headers=VARY
        )
    large = getattr(request.state, "large", False)
    if respond_async(prefer):
        submitted, _ = await runs.submit(job, owner, large=large)
        return job_response(submitted, 202, {"Preference-Applied": "respond-async", **VARY})
    arrived = getattr(request.state, "arrived", None)
    result = await until_disconnected(request, runs.run(job, owner, arrived, large))
    if media == JSON:
        return json_response(view(result) if view is not None else result, VARY)
    # Off the event loop, on the app's one chart thread (not the shared default executor).
    charts = request.state.charts
    image = await asyncio.get_running_loop().run_in_executor(
        charts, render, job, result, IMAGES[media]
    )
    return Response(image, headers=VARY, media_type=media)
