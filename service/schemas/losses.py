"""A loss and its options, as PyTorch's functional losses take them (torch.nn.functional)."""

from typing import Annotated, Literal

from pydantic import Field

from service.schemas.common import StrictModel

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Reduction = Literal["mean", "sum"]
# The default of PyTorch's `ignore_index`: no class id is -100, so nothing is ignored.
IGNORE_INDEX = -100


class LossOptions(StrictModel):
    """A loss: its `name` (each loss's own literal) and its options."""

    name: str


class ReducedLoss(LossOptions):
    """Options every PyTorch loss takes."""

    reduction: Reduction = Field(
        "mean",
        description="`mean`: the mean over the elements (cross_entropy: over the targets not "
        "ignored, weighted by their class's `weight`); `sum`: their sum",
    )


class MSELoss(ReducedLoss):
    """F.mse_loss: the target has the output's shape."""

    name: Literal["mse"]


class L1Loss(ReducedLoss):
    """F.l1_loss: the target has the output's shape."""

    name: Literal["l1"]


class SmoothL1Loss(ReducedLoss):
    """F.smooth_l1_loss: the target has the output's shape."""

    name: Literal["smooth_l1"]
    beta: NonNegativeFloat = Field(
        1.0, description="where the loss turns from quadratic to linear; 0 is the L1 loss"
    )


class CrossEntropyLoss(ReducedLoss):
    """F.cross_entropy against logits, with class ids or class probabilities as target.

    Where the classes lie: models but `gpt` follow PyTorch, classes in dimension 1 of an
    (N, C) or (N, C, d1, ...) output (0 of an unbatched (C,)), class ids of shape
    (N, d1, ...); `gpt` follows the course, classes last in its (B, T, V) output, flattened
    to (B*T, V), class ids of shape (B, T). Probabilities have the output's shape."""

    name: Literal["cross_entropy"]
    weight: list[NonNegativeFloat] | None = Field(
        None,
        min_length=1,
        description="a weight per class (as many as the output has classes); null: all 1",
    )
    ignore_index: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] = Field(
        IGNORE_INDEX,
        description="class ids equal to it add nothing to the loss or the mean's count "
        "(all of them ignored: a mean of nothing, NaN); class-id targets only: another value "
        "than the default -100 with probabilities is refused",
    )
    label_smoothing: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        0.0,
        description="the target mixed with the uniform distribution: (1 - s) target + s / C",
    )


class BCEWithLogitsLoss(ReducedLoss):
    """F.binary_cross_entropy_with_logits: the target, of probabilities, has the output's
    shape."""

    name: Literal["bce_with_logits"]
    pos_weight: NonNegativeFloat | list[NonNegativeFloat] | None = Field(
        None,
        description="the weight of positive examples: a number, or a list broadcast against "
        "the output's last dimension (1 or as many as its size); null: 1",
    )


class SumLoss(LossOptions):
    """output.sum(), without a target: every output element's gradient is 1."""

    name: Literal["sum"]
