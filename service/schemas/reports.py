"""Response bodies, defined once: the domain builds these dictionaries (checked statically)
and the OpenAPI document describes them. Statistics that are NaN or infinite are `null`;
counts say why."""

from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from service.schemas.curvature import CurvatureReport
from service.schemas.precision import PrecisionReport

# not_measured: no gradient reached the layer (nothing before it requires grad: an
# activation, flatten or dropout before the first layer with parameters).
Verdict = Literal["healthy", "vanishing", "exploding", "dead", "non_finite", "not_measured"]
StatisticsPath = Literal["native", "tiled", "reference"]
RecurrentType = Literal["rnn", "lstm", "gru"]
Direction = Literal["forward", "reverse"]


class Stats(TypedDict):
    """Summary statistics of one tensor (population std; fractions of all elements)."""

    mean_abs: float | None
    l2_norm: float | None
    rms: float | None
    max_abs: float | None
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    zero_fraction: float | None
    nonfinite_count: int
    numel: int


class ParameterReport(TypedDict):
    name: Annotated[str, Field(description="PyTorch's own name, from named_parameters()")]
    layer: Annotated[str | None, Field(description="the reported layer holding it")]
    shape: list[int]
    grad: Annotated[Stats | None, Field(description="null when the parameter got no gradient")]
    value: Stats
    grad_to_value_ratio: Annotated[float | None, Field(description="‖grad‖₂ / ‖value‖₂")]


class LayerReport(TypedDict):
    index: int
    name: str
    output_shape: list[int]
    output: Stats | None
    output_grad: Annotated[Stats | None, Field(description="statistics of dL/d(output)")]
    param_grad_mean_abs: Annotated[
        float | None,
        Field(
            description="mean |grad| over the parameters of the layer, those whose gradient "
            "is rounding noise (zero by construction; see the findings) left out"
        ),
    ]
    relative_to_last: Annotated[
        float | None, Field(description="this layer's verdict metric divided by the last layer's")
    ]
    verdict: Annotated[
        Verdict,
        Field(
            description="not_measured: no gradient reached its output or parameters (nothing "
            "before it requires grad), counted in no finding"
        ),
    ]


class Diagnosis(TypedDict):
    verdict: Verdict
    metric: str
    first_to_last_ratio: float | None
    findings: list[str]


class Provenance(TypedDict):
    service_version: str
    torch_version: str
    python_version: str
    device: str
    dtype: str
    seed: int
    mode: str
    init_sha256: Annotated[
        str, Field(description="sha256 of the initial parameters, in order, as bytes")
    ]
    deterministic: bool
    statistics: Annotated[
        StatisticsPath,
        Field(
            description="how the statistics were computed: `native` (the CPU kernel), `tiled` "
            "(accelerators) or `reference` (plain torch, where the kernel is not built)"
        ),
    ]


class Timing(TypedDict):
    build: float
    forward: float
    backward: float
    statistics: float
    through_time: NotRequired[float]
    total: float


class ThroughTimeSeries(TypedDict):
    layer: Annotated[int, Field(description="the stacked layer (the l of weight_ih_l{l})")]
    direction: Direction
    grad_norms: Annotated[
        list[float | None],
        Field(description="‖∂L/∂h_t‖₂ over batch and hidden units, t = 0..T-1: the total "
              "derivative, through later steps and layers"),
    ]  # fmt: skip
    first_to_last_ratio: Annotated[
        float | None,
        Field(description="the norm at the first processed step over the last's (the reverse "
              "direction processes t = T-1 first)"),
    ]  # fmt: skip
    horizon: Annotated[
        int | None,
        Field(description="steps, counted back from the last processed one, before the norm "
              "first falls below thresholds.vanishing × the last step's"),
    ]  # fmt: skip


class ThroughTimeReport(TypedDict):
    """Gradient flow through time of one recurrent layer (an unrolled replay of it)."""

    layer: Annotated[str, Field(description="the module's name, e.g. layers.1")]
    type: RecurrentType
    steps: int
    series: list[ThroughTimeSeries]
    verdict: Verdict


class DiagnosticsReport(TypedDict):
    """The diagnosis first, then the layers, then the parameters."""

    diagnosis: Diagnosis
    loss: float | None
    output_shape: list[int]
    layers: list[LayerReport]
    parameters: list[ParameterReport]
    provenance: Provenance
    timing_ms: Timing
    through_time: NotRequired[
        Annotated[
            list[ThroughTimeReport],
            Field(description="per recurrent layer, only for models that have them"),
        ]
    ]
    curvature: NotRequired[CurvatureReport]
    precision: NotRequired[PrecisionReport]


class LayerSummary(TypedDict):
    name: str
    output_grad_mean_abs: float | None
    param_grad_mean_abs: float | None
    relative_to_last: float | None
    verdict: Verdict


class DiagnosticsSummary(TypedDict):
    """`?view=summary`: the diagnosis and a row per layer."""

    diagnosis: Diagnosis
    loss: float | None
    layers: list[LayerSummary]


class Ratios(TypedDict):
    """Each variant's mean |grad| divided by the baseline variant's, by name."""

    parameters: dict[str, dict[str, float | None]]
    layers: dict[str, dict[str, float | None]]


class CompareReport(TypedDict):
    baseline: str
    runs: dict[str, DiagnosticsReport]
    ratios: Ratios


class CompareSummary(TypedDict):
    """`?view=summary`: each run's summary, and the ratios."""

    baseline: str
    runs: dict[str, DiagnosticsSummary]
    ratios: Ratios
