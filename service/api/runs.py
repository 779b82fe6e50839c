"""What the routes that run models share: their error responses, waiting for a run while
watching for the client to leave, and the JSON response."""

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api.problems import problem_responses
from service.errors import ClientClosed

# What a route that runs models can answer besides 200.
RUN_ERRORS = problem_responses(400, 413, 415, 422, 429, 500, 503, 504)


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


def json_response(report: dict[str, Any]) -> Response:
    return Response(orjson.dumps(report), media_type="application/json")
