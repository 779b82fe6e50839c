"""`/metrics` in Prometheus' text format: requests by route and status, counted here; run
time, queue depth, jobs by state and workers seen, from the backend at each scrape."""

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import RunServiceDep
from service.execution.backend import BackendMetrics

router = APIRouter(tags=["service"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestCounter:
    """ASGI middleware: every HTTP request counted by its route's template (not its path:
    job ids would make a series each) and its status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "gradiag_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, scope["method"], str(status)).inc()


class _Snapshot(Collector):
    """The backend's figures at one scrape, as metric families."""

    def __init__(self, metrics: BackendMetrics):
        self.metrics = metrics

    def collect(self):  # type: ignore[no-untyped-def]
        m = self.metrics
        queues = GaugeMetricFamily(
            "gradiag_queue_depth", "runs waiting in each queue", labels=["queue"]
        )
        for name, depth in sorted(m.queues.items()):
            queues.add_metric([name], depth)
        jobs = CounterMetricFamily("gradiag_jobs", "jobs that reached each state", labels=["state"])
        for state, count in sorted(m.jobs.items()):
            jobs.add_metric([state], count)
        workers = GaugeMetricFamily("gradiag_workers", "workers seen (celery: heartbeats)")
        workers.add_metric([], m.workers)
        runs = HistogramMetricFamily(
            "gradiag_run_seconds", "run time by model kind and device", labels=["kind", "device"]
        )
        for (kind, device), (buckets, total) in sorted(m.run_seconds.items()):
            runs.add_metric([kind, device], buckets, total)
        yield from (queues, jobs, workers, runs)


@router.get("/metrics", operation_id="metrics", response_class=Response)
async def metrics(request: Request, runs: RunServiceDep) -> Response:
    """Prometheus exposition: `gradiag_requests_total`, `gradiag_run_seconds`,
    `gradiag_queue_depth`, `gradiag_jobs_total`, `gradiag_workers`."""
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(await runs.backend.metrics()))
    registry: CollectorRegistry = request.state.registry
    body = generate_latest(registry) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE)
