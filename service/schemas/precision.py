"""The report's `precision` section: the run's gradients against the same run in float64.

The float64 run starts from the run's own weights upcast (so that it measures the run
dtype's arithmetic, not the rounding of its weights), with the same input and target upcast
and the same dropout masks. A relative error is ‖x − x₆₄‖ / ‖x₆₄‖.
"""

from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12


class ParameterPrecision(TypedDict):
    """One parameter's relative errors against float64 (null where the float64 gradient is
    zero by construction: then only the absolute size of the run's noise means anything)."""

    name: str
    grad: Annotated[float | None, Field(description="‖g − g₆₄‖₂ / ‖g₆₄‖₂ over the tensor")]
    mean_abs: Annotated[float | None, Field(description="of the reported mean |grad|")]
    l2_norm: Annotated[float | None, Field(description="of the reported ‖grad‖₂")]
    max_abs: Annotated[float | None, Field(description="of the reported max |grad|")]
    zero_by_construction: Annotated[
        bool, Field(description="the float64 gradient is rounding noise (see the findings)")
    ]


class PrecisionReport(TypedDict):
    """The run's dtype against float64 (present when `precision_check` is requested)."""

    dtype: str
    reference: str
    run_is_reference: Annotated[
        bool, Field(description="the run is in float64 already: nothing to compare")
    ]
    loss: Annotated[float | None, Field(description="the loss's relative error")]
    reference_loss: Annotated[float | None, Field(description="the float64 run's loss")]
    max_grad_error: Annotated[
        float | None, Field(description="the largest `grad` relative error of any parameter")
    ]
    threshold: Annotated[
        float, Field(description="relative error above which the dtype is not trusted")
    ]
    trusted: Annotated[
        bool, Field(description="the loss and every gradient within `threshold` of float64")
    ]
    parameters: list[ParameterPrecision]
