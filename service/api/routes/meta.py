"""What the service can do, and whether it is alive and ready."""

import asyncio
import math
from typing import Any, get_args

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, TypeAdapter

import service
from service.api.deps import LifecycleDep, RunServiceDep, get_owner
from service.api.problems import problem_responses
from service.architectures.activations import ACTIVATIONS
from service.architectures.registry import MODEL_KINDS
from service.config import Limits
from service.diagnostics.losses import LOSSES
from service.diagnostics.tensors import DTYPES
from service.diagnostics.verdicts import SEVERITY
from service.errors import NotReady
from service.schemas.init import WEIGHT_SCHEMES, scheme_name
from service.schemas.layers import LAYER_SPECS
from service.schemas.models import GPT_PRESETS, MODEL_SPECS, RESNET_PRESETS
from service.schemas.reports import Stats
from service.schemas.requests import Thresholds
from service.schemas.tensors import TensorGenerator

router = APIRouter(tags=["service"])

# The model kinds' spec classes, by the value of their `kind` field.
_SPEC_MODELS = {get_args(spec.model_fields["kind"].annotation)[0]: spec for spec in MODEL_SPECS}
_MODEL_SCHEMAS = {kind: _SPEC_MODELS[kind].model_json_schema() for kind in MODEL_KINDS}
_GENERATOR_SCHEMA = TypeAdapter(TensorGenerator).json_schema()
_LOSS_SCHEMAS = {name: loss.options.model_json_schema() for name, loss in LOSSES.items()}
_INIT_SCHEMES = {scheme_name(scheme): scheme.model_json_schema() for scheme in WEIGHT_SCHEMES}


def _layer_types() -> dict[str, dict[str, Any]]:
    """Every layer `type` with the JSON schema of its fields."""
    types = {}
    for spec in LAYER_SPECS:
        schema = spec.model_json_schema()
        for name in spec.model_fields["type"].annotation.__args__:  # type: ignore[union-attr]
            types[name] = schema
    return types


_LAYER_TYPES = _layer_types()


class Devices(BaseModel):
    default: str
    allowed: list[str]


class Capabilities(BaseModel):
    service_version: str
    model_kinds: dict[str, dict[str, Any]]
    layer_types: dict[str, dict[str, Any]]
    gpt_presets: dict[str, dict[str, Any]]
    resnet_presets: dict[str, dict[str, Any]]
    activations: list[str]
    losses: list[str]
    loss_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,  # absent from older servers' answers
        description="each loss's JSON schema: `loss` is its name, or an object of its `name` "
        "and these options",
    )
    dtypes: list[str]
    tensor_generators: dict[str, Any]
    init_schemes: dict[str, dict[str, Any]] = Field(
        description="the `torch.nn.init` schemes an `init` names, with the JSON schema of "
        "their parameters; a bias takes those that need no fans (not xavier, kaiming, "
        "orthogonal)"
    )
    statistics: list[str]
    verdicts: list[str]
    default_thresholds: Thresholds
    devices: Devices
    limits: Limits
    max_body_bytes: int
    request_timeout_s: float
    job_timeout_s: float
    backend: str


class Health(BaseModel):
    status: str


class CacheState(BaseModel):
    hits: int
    misses: int
    idle_bytes: int
    max_bytes: int
    idle_entries: int
    max_entries: int
    builds_cancelled: int


class Readiness(BaseModel):
    status: str
    device: str
    backend: dict[str, Any] = Field(description="the backend's name and state")
    model_cache: CacheState | None = Field(description="null where runs execute elsewhere")
    statistics_kernel: str | None = Field(
        description="the native statistics kernel: `ready`; `off` (GRADIAG_NATIVE_STATISTICS="
        "false); or why it is not used (not built, or it failed its check), in which case "
        "the plain-torch reference path computes the statistics; null where runs execute "
        "elsewhere"
    )


@router.get(
    "/v1/capabilities",
    operation_id="get_capabilities",
    response_model=Capabilities,
    responses=problem_responses(401),
    dependencies=[Depends(get_owner)],
)
async def get_capabilities(runs: RunServiceDep) -> Capabilities:
    """Everything a client needs to build a valid request: model kinds and layer types with
    their JSON schemas, GPT and ResNet presets, activations, losses with their options'
    schemas, dtypes, tensor generators, init schemes, the statistics and verdicts reported,
    the devices a request may name, and the limits it must fit."""
    settings = runs.settings
    return Capabilities(
        service_version=service.__version__,
        model_kinds=_MODEL_SCHEMAS,
        layer_types=_LAYER_TYPES,
        gpt_presets=GPT_PRESETS,
        resnet_presets=RESNET_PRESETS,
        activations=list(ACTIVATIONS),
        losses=list(LOSSES),
        loss_options=_LOSS_SCHEMAS,
        dtypes=list(DTYPES),
        tensor_generators={"schema": _GENERATOR_SCHEMA},
        init_schemes=_INIT_SCHEMES,
        statistics=list(Stats.__annotations__),
        verdicts=list(SEVERITY),
        default_thresholds=Thresholds(),
        devices=Devices(default=runs.devices.default, allowed=sorted(runs.devices.allowed)),
        limits=settings.limits,
        max_body_bytes=settings.max_body_bytes,
        request_timeout_s=settings.request_timeout_s,
        job_timeout_s=settings.job_timeout_s,
        backend=settings.backend,
    )


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers. Says nothing about the worker or the device."""
    return Health(status="ok")


@router.get(
    "/readyz", operation_id="readyz", response_model=Readiness, responses=problem_responses(503)
)
async def readyz(runs: RunServiceDep, lifecycle: LifecycleDep) -> Readiness:
    """Readiness: the backend accepts work (Redis answers, on the celery backend) and, where
    runs execute in this process, a tiny allocation on the default device succeeds. 503
    while starting, broken, or shutting down: for GRADIAG_DRAIN_S after SIGTERM the
    service still serves requests, so that load balancers see the 503 and stop sending."""
    if lifecycle is not None and lifecycle.draining:
        retry_s = max(1, math.ceil(runs.settings.drain_s))
        raise NotReady("shutting down", headers={"Retry-After": str(retry_s)})
    backend = runs.backend
    await backend.ready()
    runtime = getattr(backend, "runtime", None)
    if runtime is not None and not await asyncio.to_thread(runs.devices.usable):
        raise NotReady(f"device {runs.devices.default} is not usable")
    cache = None
    if runtime is not None:
        models = runtime.models
        cache = CacheState(
            hits=models.hits,
            misses=models.misses,
            idle_bytes=models.idle_bytes,
            max_bytes=models.max_bytes,
            idle_entries=models.idle_entries,
            max_entries=models.max_entries,
            builds_cancelled=models.builds_cancelled,
        )
    return Readiness(
        status="ready",
        device=runs.devices.default,
        backend=await backend.describe(),
        model_cache=cache,
        statistics_kernel=runtime.statistics.state if runtime is not None else None,
    )
