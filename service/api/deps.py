"""Dependencies: typed access to what the lifespan created."""

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from service.workers.runner import Runner


class AppState(TypedDict):
    """Long-lived resources, created in the lifespan and handed to each request. The
    settings travel with the runner (`runner.settings`)."""

    runner: Runner


# `async def` on purpose: FastAPI runs plain `def` dependencies in its threadpool, a thread
# hop per request for what is an attribute read.
async def get_runner(request: Request) -> Runner:
    return request.state.runner


RunnerDep = Annotated[Runner, Depends(get_runner)]
