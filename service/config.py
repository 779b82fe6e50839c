"""Settings: every knob of the service, read from `GRADIAG_*` environment variables."""

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.logs import LogFormat

DevicePattern = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


def canonical_device(device: str) -> str:
    """One name per device: `cuda:0` is `cuda` (the service never changes torch's current
    CUDA device, so both name device 0)."""
    return "cuda" if device == "cuda:0" else device


DTypeName = Literal["float32", "float64", "bfloat16"]


def _whole_number(value: object) -> object:
    """`5e12` for a count, as people write large budgets, when it is a whole number."""
    if isinstance(value, str) and any(c in value for c in ".eE"):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    return value


Count = Annotated[int, BeforeValidator(_whole_number)]


class Limits(BaseSettings):
    """Budgets a request must fit before any tensor is allocated."""

    model_config = SettingsConfigDict(env_prefix="GRADIAG_", extra="ignore")

    max_parameters: int = Field(400_000_000, ge=1, description="parameters of one model")
    max_activation_elements: int = Field(
        400_000_000, ge=1, description="estimated elements of saved activations"
    )
    max_input_elements: int = Field(4_000_000, ge=1, description="elements of input or target")
    max_layers: int = Field(1024, ge=1, description="layers (or blocks) of one model")
    max_flops: Count = Field(
        5 * 10**12,
        ge=1,
        description="estimated FLOPs of a run: forward+backward, and the passes of its "
        "curvature and precision check",
    )
    max_variants: int = Field(16, ge=1, description="variants of one compare request")
    max_sweep_runs: int = Field(256, ge=1, description="runs of one sweep (the axes' product)")
    max_memory_bytes: Count = Field(
        8 << 30,
        ge=1,
        description="estimated peak bytes of one run: weights, gradients, saved activations, "
        "input, statistics' scratch (a request's runs execute one at a time per process)",
    )


class Settings(BaseSettings):
    """The service's configuration; one instance lives in the app's lifespan state."""

    model_config = SettingsConfigDict(env_prefix="GRADIAG_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn processes started by `gradiag serve`")
    device: DevicePattern = "auto"
    allowed_devices: list[DevicePattern] = Field(
        default_factory=list,
        description="devices a request may name; empty means the default device and cpu",
    )
    default_dtype: DTypeName = "float32"
    torch_threads: int = Field(0, ge=0, description="intra-op threads; 0 = cores / concurrency")
    backend: Literal["inprocess", "celery"] = Field(
        "inprocess",
        description="where runs execute: threads of the API process, or Celery workers "
        "reached through the broker",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for the celery backend: broker and jobs"
    )
    concurrency: int = Field(1, ge=1, description="runs executing at once per process")
    queue_capacity: int = Field(
        32, ge=0, description="inprocess: jobs waiting beyond those executing"
    )
    max_queued_runs: int = Field(
        4096, ge=1, description="celery: runs waiting in a queue before new jobs get 429"
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="how long a synchronous request waits for its job (then 504)"
    )
    job_timeout_s: float = Field(
        600.0, gt=0, description="deadline of a job; on celery the hard time limit of its runs"
    )
    job_ttl_s: float = Field(86_400.0, gt=0, description="how long a finished job is kept")
    job_store_bytes: int = Field(
        256 << 20, ge=0, description="inprocess: bytes of finished jobs kept (oldest dropped)"
    )
    large_flops: Count = Field(
        10**9, ge=1, description="runs estimated at more FLOPs go to the device's large queue"
    )
    worker_max_memory_kb: int = Field(
        8_000_000, ge=0, description="celery: a worker child above this RSS is replaced; 0: never"
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="bearer keys every /v1 route requires; empty: open",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's headers must arrive within this of connecting (or of their "
        "first byte on a kept-alive connection); then 408 and the connection closes",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a request's body must arrive within this of its headers (8 MiB at about "
        "1.2 Mbit/s); then 408 and the connection closes",
    )
    keep_alive_s: int = Field(5, ge=1, description="an idle kept-alive connection closes after")
    max_connections: int = Field(
        1000, ge=1, description="open connections per process; requests beyond get a 503"
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM or SIGINT, /readyz answers 503 this long while requests are "
        "still served; then the listener closes and requests in flight finish",
    )
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms")
    native_statistics: bool = Field(
        True, description="use the native statistics kernel where it was built at install"
    )
    malloc_arenas: int = Field(
        1, ge=0, description="glibc malloc arenas of the process; 0 leaves glibc's default"
    )
    gc_freeze: bool = Field(
        True,
        description="freeze the objects of the process's start-up out of the garbage "
        "collector's view, for shorter full collections",
    )
    model_cache_bytes: int = Field(
        1 << 30,
        ge=0,
        description="initial models kept for repeated requests (LRU), in bytes of their "
        "measured footprint; 0: none",
    )
    model_cache_entries: int = Field(
        1024, ge=0, description="initial models kept for repeated requests (LRU); 0: none"
    )
    cors_origins: list[str] = Field(default_factory=list)
    log_format: LogFormat = Field(
        "text",
        description="`json`: log lines as JSON objects, and one access line per request "
        "(route, status, duration, model kind, device, request id) instead of uvicorn's",
    )
    limits: Limits = Field(default_factory=Limits)
    url: str | None = Field(
        None,
        description="clients (`gradiag diagnose`, `service.client`): the server called; "
        "unset: the CLI runs the service in its own process",
    )
    api_key: SecretStr | None = Field(
        None, description="clients: the bearer key sent (one of the server's GRADIAG_API_KEYS)"
    )


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read from the environment once."""
    return Settings()
