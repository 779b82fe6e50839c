"""The loss registry: name -> the function, its options model and its target rule.

A function takes (output, target, options, class_dim) and returns the scalar loss; a target
rule checks the options and the target's shape against the output's, before anything is
allocated, and says whether the target holds class ids.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch.nn import functional as F

from service.architectures.base import Shape
from service.errors import InvalidRequest, Loc, ShapeMismatch
from service.schemas.losses import (
    IGNORE_INDEX,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    L1Loss,
    LossOptions,
    MSELoss,
    ReducedLoss,
    SmoothL1Loss,
    SumLoss,
)

# (options, output shape, target shape, class dimension, location of the request's loss and
# target) -> whether the target holds class ids; raises where they do not fit.
TargetRule = Callable[[Any, Shape, Shape, int, Loc, Loc], bool]


def class_axis(output: Shape, class_dim: int) -> int:
    """The output's dimension holding the classes: the model's `class_dim` (1 as in
    PyTorch, -1 classes last), or 0 for an unbatched (C,) output."""
    return class_dim % len(output) if len(output) > 1 else 0


def id_shape(output: Shape, class_dim: int) -> Shape:
    """The shape of class-id targets: the output's without its class dimension."""
    axis = class_axis(output, class_dim)
    return output[:axis] + output[axis + 1 :]


def _same_shape(
    options: Any, output: Shape, target: Shape, class_dim: int, loss_loc: Loc, target_loc: Loc
) -> bool:
    if target != output:
        raise ShapeMismatch.at(
            target_loc,
            f"target has shape {list(target)}; loss '{options.name}' needs the output's "
            f"shape {list(output)}",
        )
    return False


def _classes(
    options: CrossEntropyLoss,
    output: Shape,
    target: Shape,
    class_dim: int,
    loss_loc: Loc,
    target_loc: Loc,
) -> bool:
    if not output:
        raise ShapeMismatch.at(target_loc, "cross_entropy needs an output with a class dimension")
    axis = class_axis(output, class_dim)
    classes = output[axis]
    if options.weight is not None and len(options.weight) != classes:
        raise ShapeMismatch.at(
            (*loss_loc, "weight"),
            f"{len(options.weight)} class weights; the output {list(output)} has {classes} "
            f"classes (dimension {axis})",
        )
    if target == output:
        if options.ignore_index != IGNORE_INDEX:
            raise InvalidRequest.at(
                (*loss_loc, "ignore_index"),
                "ignore_index applies to class-id targets; this target has the output's shape "
                f"{list(output)}: class probabilities",
            )
        return False
    if target == id_shape(output, class_dim):
        return True
    if axis in (0, 1):
        where = f"in dimension {axis} of its output, as F.cross_entropy takes them"
    else:
        where = "last in its output, the other dimensions flattened"
    raise ShapeMismatch.at(
        target_loc,
        f"target has shape {list(target)}; loss 'cross_entropy' needs the output's shape "
        f"{list(output)} (probabilities) or {list(id_shape(output, class_dim))} (class ids): "
        f"this model's classes lie {where}",
    )


def _binary(
    options: BCEWithLogitsLoss,
    output: Shape,
    target: Shape,
    class_dim: int,
    loss_loc: Loc,
    target_loc: Loc,
) -> bool:
    _same_shape(options, output, target, class_dim, loss_loc, target_loc)
    weights = options.pos_weight
    last = output[-1] if output else 1
    if isinstance(weights, list) and len(weights) not in (1, last):
        raise ShapeMismatch.at(
            (*loss_loc, "pos_weight"),
            f"{len(weights)} positive weights; they broadcast against the output's last "
            f"dimension, of size {last}: give 1 or {last}",
        )
    return False


def _tensor(values: float | list[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    if values is None:
        return None
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _pointwise(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def loss(
        output: torch.Tensor, target: torch.Tensor, options: ReducedLoss, class_dim: int
    ) -> torch.Tensor:
        return function(output, target, reduction=options.reduction)

    return loss


def _smooth_l1(
    output: torch.Tensor, target: torch.Tensor, options: SmoothL1Loss, class_dim: int
) -> torch.Tensor:
    return F.smooth_l1_loss(output, target, reduction=options.reduction, beta=options.beta)


def _cross_entropy(
    output: torch.Tensor, target: torch.Tensor, options: CrossEntropyLoss, class_dim: int
) -> torch.Tensor:
    axis = class_axis(tuple(output.shape), class_dim)
    if axis not in (0, 1):
        # Classes last (gpt's (B, T, V)): the course's flatten(0, 1) to (B*T, V).
        ids = target.dtype == torch.int64
        output = output.movedim(axis, -1).flatten(0, -2)
        target = target.flatten() if ids else target.movedim(axis, -1).flatten(0, -2)
    return F.cross_entropy(
        output,
        target,
        weight=_tensor(options.weight, output),
        ignore_index=options.ignore_index,
        reduction=options.reduction,
        label_smoothing=options.label_smoothing,
    )


def _bce_with_logits(
    output: torch.Tensor, target: torch.Tensor, options: BCEWithLogitsLoss, class_dim: int
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(
        output, target, reduction=options.reduction, pos_weight=_tensor(options.pos_weight, output)
    )


def _sum(
    output: torch.Tensor, target: torch.Tensor | None, options: SumLoss, class_dim: int
) -> torch.Tensor:
    return output.sum()


@dataclass(frozen=True)
class Loss:
    """One registry entry."""

    function: Callable[[torch.Tensor, Any, Any, int], torch.Tensor]
    options: type[LossOptions]
    target: TargetRule | None  # None: the loss takes no target


LOSSES: dict[str, Loss] = {
    "mse": Loss(_pointwise(F.mse_loss), MSELoss, _same_shape),
    "l1": Loss(_pointwise(F.l1_loss), L1Loss, _same_shape),
    "smooth_l1": Loss(_smooth_l1, SmoothL1Loss, _same_shape),
    "cross_entropy": Loss(_cross_entropy, CrossEntropyLoss, _classes),
    "bce_with_logits": Loss(_bce_with_logits, BCEWithLogitsLoss, _binary),
    "sum": Loss(_sum, SumLoss, None),
}
for _name, _loss in LOSSES.items():  # a name is its options' `name`, defined once
    assert get_args(_loss.options.model_fields["name"].annotation) == (_name,), _name
