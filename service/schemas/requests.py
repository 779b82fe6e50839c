"""Request bodies of the diagnostics endpoints."""

from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.config import DevicePattern, DTypeName
from service.diagnostics.losses import LOSSES
from service.schemas.common import PositiveFloat, Seed, StrictModel
from service.schemas.curvature import CurvatureOptions
from service.schemas.losses import LossOptions
from service.schemas.models import ModelSpec
from service.schemas.tensors import TensorPayload

if TYPE_CHECKING:  # the names are known at run time only, from the registry
    LossName = str
    LossSpec = LossOptions
else:
    LossName = Literal[tuple(LOSSES)]
    LossSpec = Annotated[
        Union[tuple(loss.options for loss in LOSSES.values())],  # noqa: UP007
        Field(discriminator="name"),
    ]
VerdictMetric = Literal["output_grad", "param_grad"]


def _loss_by_name(value: Any) -> Any:
    """A loss named by a string is that loss with PyTorch's default options."""
    if isinstance(value, str):
        if value in LOSSES:
            return {"name": value}
        names = ", ".join(repr(name) for name in LOSSES)
        raise PydanticCustomError("literal_error", f"Input should be one of {names}")
    return value


Loss = Annotated[
    LossSpec,
    BeforeValidator(_loss_by_name, json_schema_input_type=LossName | LossSpec),
    Field(
        description="a loss's name (PyTorch's default options), or an object: its `name` "
        "and options. cross_entropy's classes: dimension 1 of an (N, C) or (N, C, d1, ...) "
        "output as in PyTorch (class ids (N, d1, ...)), except for `gpt`, whose (B, T, V) "
        "logits have them last and are flattened to (B*T, V) (class ids (B, T))",
    ),
]

LESSON_REQUEST: dict[str, Any] = {
    "model": {
        "kind": "mlp",
        "layer_sizes": [3, 3, 3, 3, 3, 1],
        "activation": "gelu_tanh",
        "shortcut": True,
        "bias": True,
    },
    "input": [[1.0, 0.0, -1.0]],
    "target": [[0.0]],
    "loss": "mse",
    "seed": 123,
}


class Thresholds(StrictModel):
    """When a layer is called vanishing, exploding or dead."""

    vanishing: PositiveFloat = Field(
        1e-2, description="below this fraction of the last layer's gradient: vanishing"
    )
    exploding: PositiveFloat = Field(
        1e2, description="above this multiple of the last layer's gradient: exploding"
    )
    dead_fraction: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        0.9, description="a layer whose gradient is exactly zero beyond this fraction is dead"
    )
    metric: VerdictMetric = Field(
        "output_grad",
        description="the gradient compared across layers: dL/d(layer output), or the mean "
        "absolute gradient of the layer's parameters",
    )


class DiagnosticsRequest(StrictModel):
    """One forward and backward pass of a model built from data."""

    model_config = ConfigDict(json_schema_extra={"examples": [LESSON_REQUEST]})

    model: ModelSpec
    input: TensorPayload
    target: TensorPayload | None = Field(
        None, description="required by every loss but `sum`; integers for cross_entropy's class ids"
    )
    loss: Loss = Field("mse", validate_default=True)
    seed: Seed = Field(0, description="the seed of the initial weights (torch.manual_seed)")
    dtype: DTypeName | None = Field(None, description="default: the server's default dtype")
    device: DevicePattern | None = Field(
        None,
        description="cpu, cuda, cuda:N or mps, among the server's allowed devices; "
        "auto or none: the server's device",
    )
    mode: Literal["train", "eval"] = "train"
    thresholds: Thresholds = Thresholds()
    per_sample: bool = Field(
        False,
        description="also report per-sample gradient statistics: each sample's gradient norm, "
        "the gradient noise (|G|², tr Σ, B_simple, Cockpit's tests), the samples' alignment "
        "with the batch gradient and each parameter's GSNR (the report's `per_sample` "
        "sections). Needs a batch of at least 2 independent samples: refused for one sample "
        "and for batch norm in training mode",
    )
    curvature: CurvatureOptions | None = Field(
        None,
        description="also the Hessian's top eigenvalues and trace at the initial weights "
        "(report section `curvature`)",
    )
    precision_check: bool = Field(
        False,
        description="also run in float64 from the same weights, input and dropout masks, and "
        "report each gradient's relative error against it (report section `precision`)",
    )


def _loss_as_object(document: dict[str, Any]) -> dict[str, Any]:
    """A loss named by a string as the object it stands for, so that a patch or an axis may
    set one of its options (`loss.label_smoothing`)."""
    if isinstance(document.get("loss"), str):
        return {**document, "loss": {"name": document["loss"]}}
    return document


class BasedRequest(StrictModel):
    """A request derived from a whole diagnostics request, `base`, whose JSON as sent is kept
    (`base_document`): patches and axes apply to it, and a dump of the model would copy its
    tensors."""

    base: DiagnosticsRequest = Field(description="a whole diagnostics request")
    _base_document: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_base_document(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        model = handler(data)
        if isinstance(data, dict) and isinstance(data.get("base"), dict):
            model._base_document = _loss_as_object(data["base"])
        return model

    @property
    def base_document(self) -> dict[str, Any]:
        if self._base_document is None:  # built from models, not from JSON
            self._base_document = self.base.model_dump(mode="json", exclude_unset=True)
        return self._base_document


class CompareRequest(BasedRequest):
    """A base request and named variants, each a JSON Merge Patch (RFC 7386) of the base."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "base": LESSON_REQUEST,
                    "variants": {
                        "plain": {"model": {"shortcut": False}},
                        "shortcut": {"model": {"shortcut": True}},
                    },
                }
            ]
        }
    )

    variants: dict[
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")],
        dict[str, Any],
    ] = Field(min_length=1, description="name -> merge patch; the first is the baseline")
