"""Jobs in Redis, as the API (redis.asyncio) and the Celery workers (redis-py) share them.

A job is a hash `gradiag:job:<id>` (status, timestamps, progress, result or error as JSON,
and `meta`: kind, owner, labels, deadline), the pieces its runs produced in
`gradiag:job:<id>:pieces`, deliveries per run in `:attempts`, a cancellation flag in
`:cancel`, and the nested-list tensors its runs share in `:tensors` (sent once, not once per
run). Every key expires `job_ttl_s` after it was last written. State changes go
through Lua scripts, so that a finished job never changes again; each one that finishes a
job publishes its id on `gradiag:finished`.
"""

from typing import Any

import orjson

from service.schemas.jobs import Job

PREFIX = "gradiag:"
FINISHED_CHANNEL = PREFIX + "finished"
WORKERS = PREFIX + "workers"  # hash: worker name -> time of its last heartbeat
WORKER_FRESH_S = 15.0
RUN_SECONDS = PREFIX + "metrics:run_seconds"  # hash: "<kind>|<device>|<bucket>" -> count
JOB_STATES = PREFIX + "metrics:jobs"  # hash: state -> jobs that reached it
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def pieces_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:pieces"


def attempts_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:attempts"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:cancel"


def tensors_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:tensors"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}idempotency:{owner}:{key}"


# KEYS[1] job; ARGV: status, finished_at, result JSON or "", error JSON or "", ttl, id.
SETTLE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('PUBLISH', KEYS[3], ARGV[6])
return 1
"""

# KEYS: job, metrics of job states, attempts, cancel flag; ARGV: started_at, run index, ttl.
# Counts the run's delivery; queued -> running. Returns {status, deliveries, cancelled}.
START = """
local deliveries = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'running', 1)
  status = 'running'
end
return {status or '', deliveries, redis.call('EXISTS', KEYS[4])}
"""


# KEYS: job, pieces; ARGV: run index, piece JSON, ttl. Stores a run's piece once (a run
# delivered twice counts once); returns the runs stored, 0 for a duplicate, -1 when the job
# is gone (expired or forgotten).
STORE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local stored = redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'done', stored)
return stored
"""


def settle_args(
    job_id: str, status: str, finished_at: str, result: Any, error: Any, ttl_s: float
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of SETTLE."""
    encoded_result = orjson.dumps(result).decode() if result is not None else ""
    encoded_error = orjson.dumps(error).decode() if error is not None else ""
    keys = [job_key(job_id), JOB_STATES, FINISHED_CHANNEL]
    return keys, [status, finished_at, encoded_result, encoded_error, str(int(ttl_s)), job_id]


def new_job_fields(job: Job, meta: dict[str, Any]) -> dict[str, str]:
    return {
        "status": job["status"],
        "created_at": job["created_at"],
        "done": "0",
        "meta": orjson.dumps(meta).decode(),
    }


def decode_job(job_id: str, fields: dict[str, str]) -> tuple[Job, dict[str, Any]]:
    """The job and its meta from the fields of its hash."""
    meta = orjson.loads(fields["meta"])
    result, error = fields.get("result"), fields.get("error")
    job: Job = {
        "id": job_id,
        "kind": meta["kind"],
        "status": fields["status"],  # type: ignore[typeddict-item]
        "progress": {"done": int(fields.get("done", 0)), "total": len(meta["labels"])},
        "created_at": fields["created_at"],
        "started_at": fields.get("started_at"),
        "finished_at": fields.get("finished_at"),
        "result": orjson.loads(result) if result else None,
        "error": orjson.loads(error) if error else None,
    }
    return job, meta


def queue_name(device: str, flops: int, large_flops: int) -> str:
    """`<device>.<size>`: a run that takes milliseconds never waits behind a large one."""
    return f"{device}.{'large' if flops > large_flops else 'small'}"
