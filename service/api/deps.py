"""Dependencies: typed access to what the lifespan created."""

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from service.run_service import RunService


class AppState(TypedDict):
    """Long-lived resources, created in the lifespan and handed to each request. The
    settings travel with the service layer (`runs.settings`)."""

    runs: RunService


# `async def` on purpose: FastAPI runs plain `def` dependencies in its threadpool, a thread
# hop per request for what is an attribute read.
async def get_run_service(request: Request) -> RunService:
    service: RunService = request.state.runs
    return service


RunServiceDep = Annotated[RunService, Depends(get_run_service)]
