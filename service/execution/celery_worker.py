"""The Celery worker: each child bootstraps a runtime, then runs one job run per task.

A run's message is plain JSON (`RunUnit.message`) plus its job's id, kind, labels and
deadline; the child plans it again, runs it on its run thread, stores its piece, and the
run that finishes a job combines the pieces into the job's result. Faults end as answers:
a run delivered a third time (its worker died twice) fails the job with `worker_lost`; a run
past the job's deadline stops at its next layer (or is killed at the hard limit) and fails
it with `timeout`; a cancelled job's runs stop at their next layer or never start.
"""

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis
from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service import logs
from service.config import Settings
from service.diagnostics.run import CANCEL_POINTS_MIN_FLOPS
from service.diagnostics.tensors import LiteralChecks
from service.errors import Cancelled, GradiagError, Timeout, WorkerLost
from service.execution import redis_jobs as keys
from service.execution.backend import bucket
from service.execution.celery_app import RUN_TASK, make_celery
from service.execution.jobs import RunUnit, combine, execute_unit, now
from service.runtime import Runtime

logger = logging.getLogger("gradiag")

MAX_DELIVERIES = 2  # a run is redelivered at most once after its worker was lost
CANCEL_POLL_S = 0.05
HEARTBEAT_S = 5.0
REDIS_TIMEOUT_S = 5.0


class WorkerState:
    """What one worker process holds: its settings, a Redis client, and (in each child)
    the runtime that runs models."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = _client(settings.broker_url)
        self._register()
        self.runtime: Runtime | None = None
        self._job_tensors: tuple[str, dict[str, Any], LiteralChecks] | None = None

    def _register(self) -> None:
        self._settle = self.redis.register_script(keys.SETTLE)
        self._start = self.redis.register_script(keys.START)
        self._store_piece = self.redis.register_script(keys.STORE)

    def bootstrap(self) -> None:
        # A fork has no threads: each child starts its own run thread and side thread.
        self.redis = _client(self.settings.broker_url)
        self._register()
        self.runtime = Runtime.bootstrap(self.settings.model_copy(update={"concurrency": 1}))

    def settle(self, job_id: str, status: str, result: Any = None, error: Any = None) -> bool:
        names, args = keys.settle_args(
            job_id, status, now(), result, error, self.settings.job_ttl_s
        )
        return bool(self._settle(keys=names, args=args))

    def run(self, message: dict[str, Any]) -> None:
        """Never raises: whatever goes wrong ends the job as a problem, not a hang. Its log
        lines name the request that submitted the job."""
        with logs.bound(message.get("request_id")):
            try:
                self._run(message)
            except _CancelledRun:
                self.settle(message["job"], "cancelled")
            except Exception:
                index, job = message.get("index"), message.get("job")
                logger.exception("run %s of job %s failed", index, job)
                error = GradiagError("an unexpected error occurred")
                with contextlib.suppress(redis.RedisError):
                    self.settle(message["job"], "failed", error=error.problem())

    def _run(self, message: dict[str, Any]) -> None:
        job_id, index = message["job"], message["index"]
        names = [keys.job_key(job_id), keys.JOB_STATES, keys.attempts_key(job_id),
                 keys.cancel_key(job_id)]  # fmt: skip
        args = [now(), str(index), str(int(self.settings.job_ttl_s))]
        status, deliveries, cancelled = self._start(keys=names, args=args)
        if not status or status in keys.TERMINAL_STATES:
            return  # cancelled, failed by another run, or expired
        if cancelled:
            self.settle(job_id, "cancelled")
            return
        if time.time() > message["deadline_at"]:  # it waited in the queue past the deadline
            late = Timeout.job_deadline(self.settings.job_timeout_s)
            self.settle(job_id, "failed", error=late.problem())
            return
        if deliveries > MAX_DELIVERIES:
            lost = WorkerLost(f"run {index} lost its worker {deliveries - 1} times")
            self.settle(job_id, "failed", error=lost.problem())
            return
        try:
            piece = self._execute(message)
        except GradiagError as error:
            self.settle(job_id, "failed", error=error.problem())
            self.redis.set(keys.cancel_key(job_id), "1", ex=int(self.settings.job_ttl_s))
            return
        self._store(message, piece)

    def _execute(self, message: dict[str, Any]) -> Any:
        runtime = self.runtime
        assert runtime is not None, "the child was not bootstrapped"
        resolve, literals = self._shared(message["job"])
        unit = RunUnit.from_message(message, self.settings.limits, resolve, literals)
        cancel, timed_out = threading.Event(), threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(message, cancel, timed_out), daemon=True
        )
        # A run without cancellation points (see run.py) has nothing to watch for.
        watched = unit.plan.model.estimate.flops >= CANCEL_POINTS_MIN_FLOPS
        if watched:
            watcher.start()
        started = time.perf_counter()
        try:
            piece = runtime.run_threads.submit(execute_unit, unit, cancel, runtime.models).result()
        except Cancelled:
            if timed_out.is_set():
                raise Timeout.job_deadline(self.settings.job_timeout_s) from None
            raise _CancelledRun from None
        finally:
            cancel.set()  # ends the watcher
            if watched:
                watcher.join()
        self._observe(message["kind"], unit.plan.device, time.perf_counter() - started)
        return piece

    def _shared(self, job_id: str) -> tuple[Callable[[str], Any], LiteralChecks]:
        """The tensors this job's runs share, read once per child (its runs are often
        consecutive), and the checks of them, kept for the job's next run here."""
        if self._job_tensors is None or self._job_tensors[0] != job_id:
            self._job_tensors = (job_id, {}, LiteralChecks())
        _, tensors, literals = self._job_tensors

        def tensor(key: str) -> Any:
            if key not in tensors:
                raw = self.redis.hget(keys.tensors_key(job_id), key)
                if raw is None:
                    raise GradiagError(f"job {job_id}: its shared tensors expired")
                tensors[key] = orjson.loads(raw)
            return tensors[key]

        return tensor, literals

    def _watch(
        self, message: dict[str, Any], cancel: threading.Event, timed_out: threading.Event
    ) -> None:
        """Turn the job's cancellation flag, and its deadline, into the run's cancel event;
        a side thread that only talks to Redis (no torch)."""
        flag = keys.cancel_key(message["job"])
        while not cancel.wait(CANCEL_POLL_S):
            if time.time() > message["deadline_at"]:
                timed_out.set()
                cancel.set()
                return
            try:
                if self.redis.exists(flag):
                    cancel.set()
            except redis.RedisError:  # the deadline still holds; the flag is read again
                logger.warning("cancel flag of job %s unreadable", message["job"])

    def _store(self, message: dict[str, Any], piece: Any) -> None:
        job_id, ttl, labels = message["job"], int(self.settings.job_ttl_s), message["labels"]
        if len(labels) == 1:  # the job's only run: its piece makes the result
            self.settle(job_id, "succeeded", result=combine(message["kind"], labels, [piece]))
            return
        names = [keys.job_key(job_id), keys.pieces_key(job_id)]
        args = [str(message["index"]), orjson.dumps(piece).decode(), str(ttl)]
        if self._store_piece(keys=names, args=args) != len(labels):
            return
        stored = self.redis.hgetall(keys.pieces_key(job_id))
        pieces = [orjson.loads(stored[str(i)]) for i in range(len(message["labels"]))]
        result = combine(message["kind"], labels, pieces)
        self.settle(job_id, "succeeded", result=result)
        self.redis.delete(keys.pieces_key(job_id), keys.tensors_key(job_id))
        self._job_tensors = None  # the job is done: its shared tensors are not needed here

    def _observe(self, kind: str, device: str, seconds: float) -> None:
        bound = bucket(seconds)
        pipe = self.redis.pipeline()
        pipe.hincrby(keys.RUN_SECONDS, f"{kind}|{device}|{bound}", 1)
        pipe.hincrbyfloat(keys.RUN_SECONDS, f"{kind}|{device}|sum", seconds)
        pipe.execute()


class _CancelledRun(Exception):
    pass


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=2
    )


class RunTask(Task):  # type: ignore[misc]
    """In the parent process Celery calls `on_failure` for a run it killed at the hard time
    limit: the job then fails with `timeout`."""

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            state: WorkerState = self.app.gradiag_state
            message = args[0]
            error = Timeout(f"the run was stopped at the job's deadline ({exc})")
            state.settle(message["job"], "failed", error=error.problem())


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    state = WorkerState(settings)
    app.gradiag_state = state

    @app.task(name=RUN_TASK, base=RunTask, bind=True)  # type: ignore[untyped-decorator]
    def run_unit(self: Task, message: dict[str, Any]) -> None:
        state.run(message)

    def on_child_start(**_: Any) -> None:
        state.bootstrap()

    heartbeat = _Heartbeat(state.redis, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    worker_process_init.connect(on_child_start, weak=False)
    worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)
    return app


class _Heartbeat:
    """The parent process says it is alive: a key that expires unless refreshed."""

    def __init__(self, client: redis.Redis, name: str):
        self._client, self._name = client, name
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._beat, name="gradiag-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._client.hdel(keys.WORKERS, self._name)

    def _beat(self) -> None:
        while True:
            try:
                self._client.hset(keys.WORKERS, self._name, str(time.time()))
            except redis.RedisError:
                logger.warning("heartbeat: Redis unreachable")
            if self._stop.wait(HEARTBEAT_S):
                return
