"""The Celery backend, as the API process sees it: it publishes each run of a job to its
queue with a broker-only Celery app (off the event loop), and reads jobs, progress and
results from Redis with redis.asyncio. It never imports torch's devices or runs a model.

Redis unreachable is an answer, not a hang: every call fails fast with NotReady (503 with
`Retry-After`), and the next call tries again.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from service import logs
from service.config import Settings
from service.errors import IdempotencyConflict, NotReady, Timeout
from service.execution import redis_jobs as keys
from service.execution.backend import (
    RUN_SECONDS_BUCKETS,
    BackendMetrics,
    Idempotency,
    Load,
    cumulative,
)
from service.execution.celery_app import RUN_TASK, make_celery
from service.execution.jobs import JobSpec, new_job, now, shared_tensors
from service.schemas.jobs import TERMINAL, Job

logger = logging.getLogger("gradiag")

RETRY_AFTER_S = 5
REDIS_TIMEOUT_S = 2.0
HARD_LIMIT_GRACE_S = 10  # the run stops itself at the deadline; the kill comes after this


@contextlib.asynccontextmanager
async def _broker() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OperationalError, OSError) as exc:
        raise NotReady(
            f"the job store is unreachable: {type(exc).__name__}",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None


class CeleryBackend:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._redis = aioredis.Redis.from_url(
            settings.broker_url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            max_connections=256,
        )
        self._settle = self._redis.register_script(keys.SETTLE)
        self._celery = make_celery(settings)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._accepting = False

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())
        self._accepting = True

    async def stop(self) -> None:
        self._accepting = False
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def ready(self) -> None:
        if not self._accepting:
            raise NotReady("the backend is stopping or not started")
        async with _broker():
            await self._redis.ping()

    async def describe(self) -> dict[str, Any]:
        async with _broker():
            beats: dict[str, str] = await self._redis.hgetall(keys.WORKERS)  # type: ignore[assignment]
        fresh = time.time() - keys.WORKER_FRESH_S
        return {"name": "celery", "workers": sum(float(t) > fresh for t in beats.values())}

    async def metrics(self) -> BackendMetrics:
        async with _broker():
            # kombu keeps a set `_kombu.binding.<queue>` per declared queue.
            bindings = [k async for k in self._redis.scan_iter("_kombu.binding.*")]
            names = sorted(
                name
                for name in (k.removeprefix("_kombu.binding.") for k in bindings)
                if name.endswith((".small", ".large"))
            )
            depths = {name: await self._redis.llen(name) for name in names}
            states: dict[str, str] = await self._redis.hgetall(keys.JOB_STATES)  # type: ignore[assignment]
            observed: dict[str, str] = await self._redis.hgetall(keys.RUN_SECONDS)  # type: ignore[assignment]
        workers = (await self.describe())["workers"]
        counts: dict[tuple[str, str], dict[float, int]] = {}
        sums: dict[tuple[str, str], float] = {}
        for field, value in observed.items():
            kind, device, bound = field.split("|")
            if bound == "sum":
                sums[(kind, device)] = float(value)
            else:
                counts.setdefault((kind, device), {})[float(bound)] = int(value)
        runs = {key: (cumulative(c), sums.get(key, 0.0)) for key, c in counts.items()}
        return BackendMetrics(depths, {s: int(n) for s, n in states.items()}, workers, runs)

    async def load(self, spec: JobSpec) -> Load:
        queues = {self._queue(unit) for unit in spec.units}
        async with _broker():
            pending = sum([await self._redis.llen(q) for q in sorted(queues)])
        return Load(pending, self._settings.max_queued_runs, len(spec.units))

    async def wait_s(self, spec: JobSpec, load: Load) -> float:
        """The runs that must leave the queues for this job to fit, at the median run time
        the workers recorded (the upper bound of its bucket), over the live workers."""
        async with _broker():
            observed: dict[str, str] = await self._redis.hgetall(keys.RUN_SECONDS)  # type: ignore[assignment]
        workers: int = (await self.describe())["workers"]
        counts: dict[float, int] = {}  # runs recorded in each bucket, by its upper bound
        for name, value in observed.items():
            label = name.rpartition("|")[2]
            if label != "sum":
                counts[float(label)] = counts.get(float(label), 0) + int(value)
        total, seen, median = sum(counts.values()), 0, 1.0
        for upper in sorted(counts):
            seen += counts[upper]
            if 2 * seen >= total:
                median = min(upper, RUN_SECONDS_BUCKETS[-2])  # past the last bound: that long
                break
        excess = load.pending + load.cost - load.capacity
        return excess * median / max(1, workers)

    def _queue(self, unit: Any) -> str:
        estimate = unit.plan.flops
        return keys.queue_name(unit.plan.device, estimate, self._settings.large_flops)

    async def submit(self, spec: JobSpec, idempotency: Idempotency | None) -> tuple[Job, bool]:
        settings, job = self._settings, new_job(spec)
        ttl = int(settings.job_ttl_s)
        async with _broker():
            if idempotency is not None:
                replay = await self._claim(spec, idempotency, ttl)
                if replay is not None:
                    return replay, True
            deadline_at = time.time() + settings.job_timeout_s
            labels = [unit.label for unit in spec.units]
            meta = {
                "kind": spec.kind,
                "owner": spec.owner,
                "labels": labels,
                "deadline_at": deadline_at,
            }
            shared_keys: dict[int, str] = {}
            tensors: dict[str, bytes] = {}
            if len(spec.units) > 1:  # on a thread: dumping big tensors is pure Python
                shared_keys, tensors = await asyncio.to_thread(shared_tensors, spec.units)
            pipe = self._redis.pipeline()
            fields: Any = keys.new_job_fields(job, meta)
            pipe.hset(keys.job_key(spec.id), mapping=fields)
            pipe.expire(keys.job_key(spec.id), ttl)
            if tensors:
                pipe.hset(keys.tensors_key(spec.id), mapping=tensors)  # type: ignore[arg-type]
                pipe.expire(keys.tensors_key(spec.id), ttl)
            pipe.hincrby(keys.JOB_STATES, "queued", 1)
            await pipe.execute()
            common = {
                "job": spec.id,
                "kind": spec.kind,
                "labels": labels,
                "deadline_at": deadline_at,
                "request_id": logs.request_id(),  # for the worker's log lines
            }
            try:
                await asyncio.to_thread(self._publish, spec, shared_keys, common)
            except Exception:
                # Not published (or not all of it): the job ends, and its key is free again.
                await self._redis.delete(keys.job_key(spec.id), keys.tensors_key(spec.id))
                if idempotency is not None:
                    claim = keys.idempotency_key(spec.owner, idempotency.key)
                    await self._redis.delete(claim)
                raise
        return job, False

    async def _claim(self, spec: JobSpec, idempotency: Idempotency, ttl: int) -> Job | None:
        """The job an earlier request with this key started, or None after claiming it."""
        key = keys.idempotency_key(spec.owner, idempotency.key)
        claim = orjson.dumps({"job": spec.id, "body": idempotency.body_sha256}).decode()
        if await self._redis.set(key, claim, nx=True, ex=ttl):
            return None
        existing = orjson.loads(await self._redis.get(key) or "{}")
        if existing.get("body") != idempotency.body_sha256:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with another body",
                extra={"job": f"/v1/jobs/{existing.get('job')}"},
            )
        job = await self.job(existing["job"], spec.owner)
        if job is None:  # expired: the key is free again
            await self._redis.delete(key)
            return await self._claim(spec, idempotency, ttl)
        return job

    def _publish(self, spec: JobSpec, shared_keys: dict[int, str], common: dict[str, Any]) -> None:
        """Blocking: kombu's producer. One task per run, so N workers run a sweep N-wide."""
        limit = int(self._settings.job_timeout_s) + HARD_LIMIT_GRACE_S
        # A pooled producer: a connection (and its declared queues) per publish cost 10 ms.
        with self._celery.producer_pool.acquire(block=True, timeout=REDIS_TIMEOUT_S) as producer:
            for unit in spec.units:
                message, queue = {**unit.message(shared_keys), **common}, self._queue(unit)
                self._celery.send_task(
                    RUN_TASK,
                    args=[message],
                    queue=queue,
                    task_id=f"{spec.id}-{message['index']}",
                    time_limit=limit,
                    producer=producer,
                    retry=False,
                )

    async def job(self, job_id: str, owner: str) -> Job | None:
        async with _broker():
            fields: dict[str, str] = await self._redis.hgetall(keys.job_key(job_id))  # type: ignore[assignment]
        if not fields or "meta" not in fields:
            return None
        job, meta = keys.decode_job(job_id, fields)
        if meta["owner"] != owner:
            return None
        overdue = time.time() > meta["deadline_at"] + HARD_LIMIT_GRACE_S
        if job["status"] not in TERMINAL and overdue:  # no worker took it, or none is left
            late = Timeout.job_deadline(self._settings.job_timeout_s)
            ttl = self._settings.job_ttl_s
            names, args = keys.settle_args(job_id, "failed", now(), None, late.problem(), ttl)
            async with _broker():
                await self._settle(keys=names, args=args)
                return await self.job(job_id, owner)
        return job

    async def wait(self, job_id: str, owner: str, timeout_s: float) -> Job | None:
        """A wake-up only means "read the job again": it may come from a reconnect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(job_id, []).append(waiter)
            try:
                job = await self.job(job_id, owner)
                left = deadline - loop.time()
                if job is None or job["status"] in TERMINAL or left <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), left)
            finally:
                waiters = self._waiters.get(job_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(job_id, None)

    async def forget(self, job_id: str, owner: str) -> None:
        async with _broker():
            await self._redis.delete(
                keys.job_key(job_id), keys.attempts_key(job_id), keys.cancel_key(job_id)
            )

    async def cancel(self, job_id: str, owner: str) -> Job | None:
        job = await self.job(job_id, owner)
        if job is None or job["status"] in TERMINAL:
            return job
        async with _broker():
            ttl = int(self._settings.job_ttl_s)
            await self._redis.set(keys.cancel_key(job_id), "1", ex=ttl)
            if job["status"] == "queued":  # its runs will find it finished and not start
                names, args = keys.settle_args(job_id, "cancelled", now(), None, None, ttl)
                await self._settle(keys=names, args=args)
        return await self.job(job_id, owner)

    async def _listen(self) -> None:
        """Wake the requests waiting for jobs that finish; reconnects after Redis faults.
        Every wait reads the job again, so a missed message costs only its timeout."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.FINISHED_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(str(message["data"]))
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("job events: %s; reconnecting", type(exc).__name__)
                self._wake_all()
                await asyncio.sleep(1.0)

    def _wake(self, job_id: str) -> None:
        for waiter in self._waiters.get(job_id, []):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._wake(job_id)
