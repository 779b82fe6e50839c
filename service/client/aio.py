"""The asynchronous client: the synchronous one's calls, awaited."""

import asyncio
import time
from types import TracebackType
from typing import Any, Self

import httpx

from service.api.routes.meta import Capabilities
from service.client import wire
from service.client.problem import GradiagProblem
from service.client.retry import DEFAULT_RETRY, Attempts, Retry
from service.client.wire import Progress, RequestBody
from service.schemas.jobs import TERMINAL, Job, JobKind
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.sweeps import SweepReport


class AsyncClient:
    """A gradiag server's API, for asyncio. Requests are the server's models or their JSON as dicts;
    reports come back validated by the server's own schemas. Base URL and key: the
    arguments, else `GRADIAG_URL` and `GRADIAG_API_KEY`. An error answer raises
    `GradiagProblem`; an unreachable server, httpx's `TransportError`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 120.0,
        retry: Retry = DEFAULT_RETRY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers = wire.connection(base_url, api_key)
        self.retry = retry
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout_s, transport=transport
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    async def diagnose(self, request: RequestBody) -> DiagnosticsReport:
        """One model's gradient flow (`POST /v1/diagnostics`)."""
        response = await self._send("POST", wire.ROUTES["diagnostics"], wire.plain(request))
        return wire.DIAGNOSTICS_REPORT.validate_json(response.content)

    async def compare(
        self, request: RequestBody, *, progress: Progress | None = None
    ) -> CompareReport:
        """Variants side by side; with `progress`, run as a job that reports each variant."""
        if progress is not None:
            return wire.COMPARE_REPORT.validate_python(
                await self._run(request, "compare", progress)
            )
        response = await self._send("POST", wire.ROUTES["compare"], wire.plain(request))
        return wire.COMPARE_REPORT.validate_json(response.content)

    async def sweep(self, request: RequestBody, *, progress: Progress | None = None) -> SweepReport:
        """A grid of runs; with `progress`, run as a job that reports each run."""
        if progress is not None:
            return wire.SWEEP_REPORT.validate_python(await self._run(request, "sweep", progress))
        response = await self._send("POST", wire.ROUTES["sweep"], wire.plain(request))
        return wire.SWEEP_REPORT.validate_json(response.content)

    async def capabilities(self) -> Capabilities:
        return wire.capabilities(await self._send("GET", wire.CAPABILITIES))

    async def plot(self, request: RequestBody, media_type: str = "image/svg+xml") -> bytes:
        """The chart of a diagnostics, compare or sweep request, as `media_type`."""
        route = wire.ROUTES[wire.kind_of(request)]
        response = await self._send("POST", route, wire.plain(request), {"Accept": media_type})
        return wire.image(response, media_type)

    async def submit(
        self,
        request: RequestBody,
        kind: JobKind | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Job:
        """Start a job (`kind` by default from the request) and return it at once."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._send("POST", wire.JOBS, wire.job_body(request, kind), headers)
        return wire.JOB.validate_json(response.content)

    async def job(self, job: Job | str) -> Job:
        response = await self._send("GET", f"{wire.JOBS}/{wire.job_id(job)}")
        return wire.JOB.validate_json(response.content)

    async def cancel(self, job: Job | str) -> Job:
        """Ask a job to stop; the answer is the job as it stands."""
        response = await self._send("DELETE", f"{wire.JOBS}/{wire.job_id(job)}")
        return wire.JOB.validate_json(response.content)

    async def wait(
        self,
        job: Job | str,
        *,
        progress: Progress | None = None,
        poll_s: float = 0.2,
        timeout_s: float | None = None,
    ) -> Job:
        """Poll until the job has finished (succeeded, failed or cancelled) and return it;
        `progress` gets its progress at first and whenever it changes. Past `timeout_s`,
        TimeoutError (the job goes on)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen = None
        while True:
            current = await self.job(job)
            if progress is not None and current["progress"] != seen:
                seen = current["progress"]
                progress(seen)
            if current["status"] in TERMINAL:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current['id']} is still {current['status']}")
            await asyncio.sleep(poll_s)

    async def _run(self, request: RequestBody, kind: JobKind, progress: Progress) -> Any:
        job = await self.submit(request, kind)
        return wire.result(await self.wait(job, progress=progress))

    async def _send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One call, tried again as the retry policy allows; an error answer raises."""
        content = None if body is None else wire.encode(body)
        if content is not None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        attempts = Attempts(self.retry, method, path)
        while True:
            attempts.start()
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as error:
                wait = attempts.after_error(error)
                if wait is None:
                    raise
            else:
                if response.is_success:
                    return response
                wait = attempts.after_response(response)
                if wait is None:
                    raise GradiagProblem.of_response(response, attempts.count)
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
