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


class NormQuantiles(TypedDict):
    """Quantiles over the batch's samples (linear interpolation between order statistics)."""

    min: float | None
    p25: float | None
    median: float | None
    p75: float | None
    max: float | None


class ParameterPerSample(TypedDict):
    """One parameter tensor's per-sample gradients g_i (definitions: the report's
    `per_sample`)."""

    norms: Annotated[NormQuantiles, Field(description="quantiles of ‖g_i‖₂ over the samples")]
    gsnr_mean: Annotated[
        float | None,
        Field(
            description="mean of GSNR_j = ḡ_j² / σ_j², σ_j² = mean_i (g_ij − ḡ_j)² (Liu et al. "
            "2020), over the tensor's elements j with σ_j² > 0; null when there are none"
        ),
    ]
    gsnr_median: Annotated[
        float | None, Field(description="median of GSNR_j over the same elements")
    ]
    gsnr_above_one: Annotated[
        float | None,
        Field(description="fraction of those elements whose signal exceeds their noise"),
    ]
    gsnr_elements: Annotated[
        int,
        Field(
            description="elements with σ_j² > 0: a variance above rounding, 64 machine "
            "epsilons of mean_i g_ij² (float32 for float32 and bfloat16 runs)"
        ),
    ]


class ParameterReport(TypedDict):
    name: Annotated[str, Field(description="PyTorch's own name, from named_parameters()")]
    layer: Annotated[str | None, Field(description="the reported layer holding it")]
    shape: list[int]
    grad: Annotated[Stats | None, Field(description="null when the parameter got no gradient")]
    value: Stats
    grad_to_value_ratio: Annotated[float | None, Field(description="‖grad‖₂ / ‖value‖₂")]
    per_sample: NotRequired[
        Annotated[ParameterPerSample, Field(description="with `per_sample: true` only")]
    ]


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
    """Milliseconds per phase; an analysis's phase only where it was asked for (through_time
    where the model has recurrent layers)."""

    build: float
    forward: float
    backward: float
    statistics: float
    through_time: NotRequired[float]
    per_sample: NotRequired[float]
    curvature: NotRequired[float]
    precision: NotRequired[float]
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


class GradientNoise(TypedDict):
    """The batch gradient's noise (McCandlish et al. 2018, B_small = 1, B_big = B) and
    Cockpit's three batch-size tests (Schneider et al. 2021)."""

    grad_sq_norm: Annotated[
        float | None,
        Field(
            description="|G|², the unbiased estimate of the true gradient's squared norm: "
            "(B‖ḡ‖² − mean_i ‖g_i‖²) / (B − 1)"
        ),
    ]
    trace_cov: Annotated[
        float | None,
        Field(
            description="tr Σ, the per-sample gradients' covariance trace: "
            "B/(B − 1) · (mean_i ‖g_i‖² − ‖ḡ‖²)"
        ),
    ]
    b_simple: Annotated[
        float | None,
        Field(
            description="the simple noise scale B_simple = tr Σ / |G|², a batch size around "
            "which larger batches stop paying off; null when |G|² ≤ 0 (the batch gradient "
            "is within its noise)"
        ),
    ]
    norm_test: Annotated[
        float | None,
        Field(
            description="Byrd et al. 2012's norm test: the least θ for which it passes, "
            "√(tr Σ / (B‖ḡ‖²)) (it passes when tr Σ / B ≤ θ²‖ḡ‖²); null when ḡ = 0"
        ),
    ]
    inner_product_test: Annotated[
        float | None,
        Field(
            description="Bollapragada et al. 2017's inner-product test: the least θ for "
            "which it passes, √(Var_i(g_i·ḡ) / (B‖ḡ‖⁴)), Var_i(g_i·ḡ) = (Σ_i (g_i·ḡ)² − "
            "B‖ḡ‖⁴) / (B − 1); null when ḡ = 0"
        ),
    ]
    orthogonality_test: Annotated[
        float | None,
        Field(
            description="Bollapragada et al. 2017's orthogonality test: the least ν for "
            "which it passes, √(V⊥ / (B‖ḡ‖²)), V⊥ = (Σ_i ‖g_i‖² − Σ_i (g_i·ḡ)² / ‖ḡ‖²) / "
            "(B − 1), the variance of the g_i orthogonal to ḡ; null when ḡ = 0"
        ),
    ]


class Alignment(TypedDict):
    cosines: Annotated[
        list[float | None],
        Field(description="cos(g_i, ḡ) per sample, in batch order; null where g_i = 0"),
    ]
    negative_fraction: Annotated[
        float | None,
        Field(description="the fraction of samples pulling against the batch (g_i·ḡ < 0)"),
    ]


class PerSampleReport(TypedDict):
    """Per-sample gradients, whole model. For a batch of B samples (the input's first
    dimension), ℓ_i is B times sample i's share of the batch loss L, so that L = (1/B) Σ_i ℓ_i
    (for a loss averaged over the batch, the loss of sample i alone; for `sum`, B times sample
    i's sum); g_i = ∇θ ℓ_i and ḡ = ∇θ L = mean_i g_i. Computed from the batch pass as
    g_i = B · J_iᵀ δ_i (δ_i = ∂L/∂output_i), by each layer's output-gradient / input identity
    where it has one and by torch.func (vmap) elsewhere."""

    batch_size: int
    sample_grad_norms: Annotated[
        list[float | None], Field(description="‖g_i‖₂ per sample, in batch order")
    ]
    grad_norm: Annotated[float | None, Field(description="‖ḡ‖₂, the batch gradient's norm")]
    noise: GradientNoise
    alignment: Alignment
    vmap_parameters: Annotated[
        list[str],
        Field(
            description="the parameters whose per-sample gradients came from torch.func "
            "(vmap): those of layers without an identity"
        ),
    ]


class DiagnosticsReport(TypedDict):
    """The diagnosis first, then the layers, then the parameters."""

    diagnosis: Diagnosis
    loss: float | None
    output_shape: list[int]
    layers: list[LayerReport]
    parameters: list[ParameterReport]
    per_sample: NotRequired[
        Annotated[PerSampleReport, Field(description="with `per_sample: true` only")]
    ]
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
