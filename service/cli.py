"""`gradiag serve` runs the service; `gradiag worker` runs a Celery worker for the celery
backend; `gradiag openapi` prints the OpenAPI schema."""

import argparse
import json
import logging.config
import os
import sys

from uvicorn.config import LOGGING_CONFIG

from service import logs
from service.config import get_settings


def _serve(args: argparse.Namespace) -> None:
    settings = get_settings()
    workers = args.workers or settings.workers
    if workers > 1 and settings.backend == "inprocess":
        # Synchronous routes are fine; a job is known only to the process that took it.
        print(
            "gradiag serve: with several processes, /v1/jobs needs GRADIAG_BACKEND=celery "
            "(each in-process backend keeps its own jobs)",
            file=sys.stderr,
        )
    from service.server import ServeConfig, serve

    config = ServeConfig(
        "service.main:create_app",
        settings,
        factory=True,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=workers,
        log_level=args.log_level,
        # Applied in every worker process; with JSON logs the service logs each request.
        log_config=logs.dict_config(LOGGING_CONFIG, settings.log_format, args.log_level),
        access_log=settings.log_format != "json",
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    serve(config)


def _worker(args: argparse.Namespace) -> None:
    from service.config import canonical_device
    from service.execution.celery_worker import create_worker_app

    settings = get_settings()
    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    device = canonical_device("cpu" if settings.device == "auto" else settings.device)
    queues = args.queues or f"{device}.small,{device}.large"
    # A GPU worker runs one child per GPU: two CUDA contexts would share one device.
    concurrency = args.concurrency or (1 if device != "cpu" else settings.concurrency)
    base = {"version": 1, "disable_existing_loggers": False}
    logging.config.dictConfig(logs.dict_config(base, settings.log_format, args.log_level))
    app = create_worker_app(settings.model_copy(update={"device": device}))
    app.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--loglevel={args.log_level.upper()}",
            f"--hostname=gradiag-{device}-%h-{os.getpid()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _openapi(args: argparse.Namespace) -> None:
    from service.main import create_app

    try:
        json.dump(create_app().openapi(), sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`gradiag openapi | head`): stop quietly
        # Python flushes stdout again at exit: give it somewhere that cannot break.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gradiag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="default: GRADIAG_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: GRADIAG_PORT or 8000")
    serve.add_argument("--workers", type=int, help="uvicorn processes (default: GRADIAG_WORKERS)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)
    worker = commands.add_parser("worker", help="run a Celery worker (GRADIAG_BROKER_URL)")
    worker.add_argument("--queues", help="comma-separated; default: <device>.small,<device>.large")
    worker.add_argument("--concurrency", type=int, help="child processes (default: 1 on a GPU)")
    worker.add_argument("--device", help="the device this worker runs on (default: GRADIAG_DEVICE)")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(run=_worker)
    openapi = commands.add_parser("openapi", help="print the OpenAPI schema as JSON")
    openapi.set_defaults(run=_openapi)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
