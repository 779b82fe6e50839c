"""The Celery configuration the API (which only publishes) and the workers share."""

from celery import Celery

from service.config import Settings

RUN_TASK = "gradiag.run"
# Past a job's deadline its runs are killed; Redis redelivers a message nobody acknowledged
# this long after it was taken, so it must outlast the longest run.
VISIBILITY_MARGIN_S = 60
REDIS_TIMEOUT_S = 5


def make_celery(settings: Settings) -> Celery:
    app = Celery("gradiag", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results and progress live in the job's own keys
        result_expires=int(settings.job_ttl_s),
        task_acks_late=True,  # acknowledged when it ends: a lost worker's run is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a long run does not hold short ones behind it
        worker_max_memory_per_child=settings.worker_max_memory_kb or None,
        broker_transport_options={
            "visibility_timeout": int(settings.job_timeout_s) + VISIBILITY_MARGIN_S,
            # A Redis that stops answering is an error after this long, not a hang.
            "socket_timeout": REDIS_TIMEOUT_S,
            "socket_connect_timeout": REDIS_TIMEOUT_S,
        },
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="cpu.small",
    )
    return app
