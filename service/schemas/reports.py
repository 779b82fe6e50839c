"""Response bodies. Statistics that are NaN or infinite are `null`; counts say why."""

from typing import Literal

from pydantic import BaseModel, Field

Verdict = Literal["healthy", "vanishing", "exploding", "dead", "non_finite"]


class Stats(BaseModel):
    """Summary statistics of one tensor (population std; fractions of all elements)."""

    mean_abs: float | None
    l2_norm: float | None
    rms: float | None
    max_abs: float | None
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    zero_fraction: float
    nonfinite_count: int
    numel: int


class ParameterReport(BaseModel):
    name: str = Field(description="PyTorch's own name, from named_parameters()")
    layer: str | None = Field(description="the reported layer holding it")
    shape: list[int]
    grad: Stats | None = Field(description="null when the parameter got no gradient")
    value: Stats
    grad_to_value_ratio: float | None = Field(description="‖grad‖₂ / ‖value‖₂")


class LayerReport(BaseModel):
    index: int
    name: str
    output_shape: list[int]
    output: Stats
    output_grad: Stats | None = Field(description="statistics of dL/d(output)")
    param_grad_mean_abs: float | None = Field(
        description="mean |grad| over all parameters of the layer"
    )
    relative_to_last: float | None = Field(
        description="this layer's verdict metric divided by the last layer's"
    )
    verdict: Verdict


class Diagnosis(BaseModel):
    verdict: Verdict
    metric: str
    first_to_last_ratio: float | None
    findings: list[str]


class Provenance(BaseModel):
    service_version: str
    torch_version: str
    python_version: str
    device: str
    dtype: str
    seed: int
    mode: str
    init_sha256: str = Field(description="sha256 of the initial parameters, in order, as bytes")
    deterministic: bool


class Timing(BaseModel):
    build: float
    forward: float
    backward: float
    statistics: float
    total: float


class DiagnosticsReport(BaseModel):
    loss: float | None
    output_shape: list[int]
    parameters: list[ParameterReport]
    layers: list[LayerReport]
    diagnosis: Diagnosis
    provenance: Provenance
    timing_ms: Timing


class Ratios(BaseModel):
    """Each variant's mean |grad| divided by the baseline variant's, by name."""

    parameters: dict[str, dict[str, float | None]]
    layers: dict[str, dict[str, float | None]]


class CompareReport(BaseModel):
    baseline: str
    runs: dict[str, DiagnosticsReport]
    ratios: Ratios
