"""The curvature option of a diagnostics request and the report's `curvature` section.

Definitions (docs and OpenAPI): H is the Hessian of the batch loss L with respect to all
parameters, at the initial weights, with the batch run's dropout masks (L is then a smooth
function of the weights wherever the activations are). Its k eigenvalues of largest magnitude
come from power iteration with deflation, its trace from Hutchinson's estimator
tr H ≈ (1/m) Σ_j z_jᵀ H z_j over m Rademacher probes z_j (Hutchinson 1989), each product H·v by
double backward (Pearlmutter 1994). Per parameter tensor p the same for the diagonal block
H_pp (the curvature of L in p's coordinates, the other parameters fixed).
"""

from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from service.schemas.common import PositiveFloat, StrictModel, example


class CurvatureOptions(StrictModel):
    """Curvature of the batch loss at the initial weights, by Hessian-vector products (each
    costs about two forward+backward passes; the budget counts every one). The loss is the
    batch run's: dropout keeps the batch run's masks, and batch norm in training mode
    normalises with the batch's statistics (the samples interact; the Hessian is still that
    of the batch loss) without updating its running statistics."""

    model_config = example({"top_eigenvalues": 2, "trace_samples": 32, "learning_rate": 0.1})

    top_eigenvalues: int = Field(
        1,
        ge=1,
        le=32,
        description="k: the eigenvalues of the Hessian of largest magnitude, by power "
        "iteration, each deflated (kept orthogonal to the eigenvectors found before it)",
    )
    trace_samples: int = Field(
        16,
        ge=0,
        le=1024,
        description="m: Rademacher probes of Hutchinson's trace estimator (0: no trace); "
        "drawn from a generator seeded with the request's seed",
    )
    max_iterations: int = Field(
        50, ge=1, le=1000, description="power iterations per eigenvalue, at most"
    )
    tolerance: float = Field(
        1e-3,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="an eigenvalue has converged when its Rayleigh quotient changes by at most "
        "this fraction of itself from one iteration to the next",
    )
    per_layer: bool = Field(
        False,
        description="also per parameter tensor: the top eigenvalues of its diagonal block of "
        "the Hessian (k·max_iterations products each) and the block's trace (from the same "
        "probes, at no extra cost)",
    )
    learning_rate: PositiveFloat | None = Field(
        None,
        description="compare lr·λ_max with 2: gradient descent with this learning rate "
        "diverges along an eigenvector whose eigenvalue λ has lr·λ > 2",
    )


class TraceEstimate(TypedDict):
    estimate: Annotated[
        float | None, Field(description="Hutchinson's estimate (1/m) Σ_j z_jᵀ H z_j")
    ]
    stderr: Annotated[
        float | None,
        Field(description="its standard error: the probes' sample std / √m (null for m = 1)"),
    ]
    samples: Annotated[int, Field(description="m, the number of probes")]


class ParameterCurvature(TypedDict):
    """The diagonal block of the Hessian for one parameter tensor."""

    name: str
    layer: Annotated[str | None, Field(description="the reported layer holding it")]
    top_eigenvalues: Annotated[
        list[float | None],
        Field(description="min(k, the tensor's size) eigenvalues of the block, as found"),
    ]
    iterations: list[int]
    converged: bool
    trace: Annotated[
        TraceEstimate | None,
        Field(description="the block's trace, from the global probes restricted to the tensor"),
    ]


class CurvatureReport(TypedDict):
    """Curvature of the batch loss at the initial weights (present when requested)."""

    top_eigenvalues: Annotated[
        list[float | None],
        Field(
            description="the k eigenvalues of largest magnitude, in the order found (which is "
            "by decreasing magnitude once converged)"
        ),
    ]
    iterations: Annotated[list[int], Field(description="power iterations used per eigenvalue")]
    converged: Annotated[
        bool, Field(description="every eigenvalue met the tolerance within max_iterations")
    ]
    trace: Annotated[TraceEstimate | None, Field(description="null when trace_samples is 0")]
    learning_rate: float | None
    lr_times_lambda_max: Annotated[
        float | None,
        Field(description="learning_rate × the largest eigenvalue found; above 2: divergent"),
    ]
    hvps: Annotated[int, Field(description="Hessian-vector products computed")]
    per_layer: Annotated[
        list[ParameterCurvature] | None,
        Field(description="per parameter tensor, in named_parameters() order; null unless asked"),
    ]
