"""The service's commands: `gradiag serve` runs the service; `gradiag worker` runs a Celery
worker for the celery backend; `gradiag openapi` prints the OpenAPI schema."""

import json
import logging.config
import os
import sys
from typing import Annotated

import typer
from uvicorn.config import LOGGING_CONFIG

from service import logs
from service.config import get_settings

LogLevel = Annotated[str, typer.Option(help="the log level")]


def serve(
    host: Annotated[str | None, typer.Option(help="default: GRADIAG_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: GRADIAG_PORT or 8000")] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn processes (default: GRADIAG_WORKERS)")
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the HTTP service."""
    settings = get_settings()
    workers = workers or settings.workers
    if workers > 1 and settings.backend == "inprocess":
        # Synchronous routes are fine; a job is known only to the process that took it.
        print(
            "gradiag serve: with several processes, /v1/jobs needs GRADIAG_BACKEND=celery "
            "(each in-process backend keeps its own jobs)",
            file=sys.stderr,
        )
    from service import server

    config = server.ServeConfig(
        "service.main:create_app",
        settings,
        factory=True,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        workers=workers,
        log_level=log_level,
        # Applied in every worker process; with JSON logs the service logs each request.
        log_config=logs.dict_config(LOGGING_CONFIG, settings.log_format, log_level),
        access_log=settings.log_format != "json",
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    server.serve(config)


def worker(
    queues: Annotated[
        str | None, typer.Option(help="comma-separated; default: <device>.small,<device>.large")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="child processes (default: 1 on a GPU)")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="the device this worker runs on (default: GRADIAG_DEVICE)")
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run a Celery worker (GRADIAG_BROKER_URL)."""
    from service.config import canonical_device
    from service.execution.celery_worker import create_worker_app

    settings = get_settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    device = canonical_device("cpu" if settings.device == "auto" else settings.device)
    queues = queues or f"{device}.small,{device}.large"
    # A GPU worker runs one child per GPU: two CUDA contexts would share one device.
    concurrency = concurrency or (1 if device != "cpu" else settings.concurrency)
    base = {"version": 1, "disable_existing_loggers": False}
    logging.config.dictConfig(logs.dict_config(base, settings.log_format, log_level))
    app = create_worker_app(settings.model_copy(update={"device": device}))
    app.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--loglevel={log_level.upper()}",
            f"--hostname=gradiag-{device}-%h-{os.getpid()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def openapi() -> None:
    """Print the OpenAPI schema as JSON."""
    from service.main import create_app

    try:
        json.dump(create_app().openapi(), sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`gradiag openapi | head`): stop quietly
        # Python flushes stdout again at exit: give it somewhere that cannot break.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
