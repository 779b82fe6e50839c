"""The `resnet` kind: torchvision's ResNet on images (N, C, H, W), logits (N, num_classes).

The reported layers are the residual blocks, `layer1.0` … `layer4.{n}`: the unit a shortcut
spans, so that the first block's gradient relative to the last block's shows what the
shortcuts do. Stem and fc are left out (as the GPT's embeddings and head are): the last
block, not the classifier, is the reference.
"""

from dataclasses import dataclass

from torch import nn

from service.architectures.base import Estimate, ModelKind, ModelSignature, Shape
from service.architectures.init_schemes import InitUnit
from service.architectures.resnet_modules import (
    STEM_CHANNELS,
    BlockPlan,
    ResNet,
    block_plans,
)
from service.errors import InvalidRequest, Loc, ShapeMismatch
from service.schemas.models import ResNetSpec


def _window(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


Size2d = tuple[int, int]


@dataclass(frozen=True)
class _Costs:
    """The costs of one network's parts on a batch of `batch` images."""

    batch: int
    block_type: str
    groups: int
    norm: str
    norm_groups: int

    def conv(
        self, c_in: int, c_out: int, size: Size2d, kernel: int, stride: int = 1, groups: int = 1
    ) -> tuple[Size2d, Estimate]:
        """A bias-free convolution (padding kernel // 2), its norm and a ReLU in place."""
        out = tuple(_window(s, kernel, stride, kernel // 2) for s in size)
        n = self.batch * c_out * out[0] * out[1]
        taps = c_in // groups * kernel * kernel
        estimate = Estimate(
            parameters=c_out * taps,
            activation_elements=n,  # the convolution's output, kept by the norm (or the ReLU)
            flops=6 * n * taps + 8 * n,
            # The unfolded input (im2col) of the non-oneDNN paths and its gradient.
            workspace_elements=2 * self.batch * out[0] * out[1] * c_in * kernel * kernel,
        )
        if self.norm != "none":
            # The norm's output, which the ReLU keeps, and its statistics: a batch norm's saved
            # and running mean and variance per channel, a group norm's mean and rstd per group.
            stats = 4 * c_out if self.norm == "batch" else 2 * self.batch * self.norm_groups
            estimate += Estimate(2 * c_out, n + stats, 24 * n)
        return (out[0], out[1]), estimate

    def block(self, plan: BlockPlan, size: Size2d) -> tuple[Size2d, Estimate]:
        """One block: its convolutions, the downsample and the shortcut's add."""
        if self.block_type == "basic":
            mid, first = self.conv(plan.in_channels, plan.width, size, 3, plan.stride)
            out, second = self.conv(plan.width, plan.out_channels, mid, 3)
            total = first + second
        else:
            _, first = self.conv(plan.in_channels, plan.width, size, 1)
            mid, second = self.conv(plan.width, plan.width, size, 3, plan.stride, self.groups)
            out, third = self.conv(plan.width, plan.out_channels, mid, 1)
            total = first + second + third
        if plan.downsample:
            total += self.conv(plan.in_channels, plan.out_channels, size, 1, plan.stride)[1]
        n = self.batch * plan.out_channels * out[0] * out[1]
        return out, total + Estimate(flops=n, layers=1, output_elements=n)


def _check_config(spec: ResNetSpec, plans: list[BlockPlan], loc: Loc) -> None:
    cfg = spec.config()
    model = (*loc, "model")
    for key, default in (("groups", 1), ("width_per_group", 64)):
        if cfg["block"] == "basic" and cfg[key] != default:
            where = key if getattr(spec, key) is not None else "block"
            raise InvalidRequest.at(
                (*model, where),
                f"{key}={cfg[key]}: a basic block takes only groups=1 and width_per_group=64 "
                "(torchvision's BasicBlock)",
            )
    if spec.zero_init_residual and spec.norm == "none":
        raise InvalidRequest.at(
            (*model, "zero_init_residual"),
            "zero_init_residual zeroes each block's last norm weight: it needs norm batch or group",
        )
    if spec.norm == "group":
        last = "bn2" if cfg["block"] == "basic" else "bn3"
        norms = [("bn1", STEM_CHANNELS)]
        for p in plans:  # a bottleneck's bn2 has bn1's width; a downsample's, the last's
            norms += [(f"{p.name}.bn1", p.width), (f"{p.name}.{last}", p.out_channels)]
        for name, channels in norms:
            if channels % spec.norm_groups:
                raise ShapeMismatch.at(
                    (*model, "norm_groups"),
                    f"norm_groups={spec.norm_groups} does not divide the {channels} channels "
                    f"of {name}",
                )


def signature(spec: ResNetSpec, input_shape: Shape, loc: Loc) -> ModelSignature:
    if len(input_shape) != 4:
        hint = ": wrap a single image as [[...]]" if len(input_shape) == 3 else ""
        raise ShapeMismatch.at(
            (*loc, "input"),
            f"input has shape {list(input_shape)}; a resnet takes images of shape "
            f"(batch, channels, height, width){hint}",
        )
    cfg = spec.config()
    plans = block_plans(
        cfg["block"], cfg["layers"], cfg["groups"], cfg["width_per_group"], spec.shortcut
    )
    _check_config(spec, plans, loc)
    batch, channels, height, width = input_shape
    costs = _Costs(batch, cfg["block"], cfg["groups"], spec.norm, spec.norm_groups)
    stem_size, estimate = costs.conv(channels, STEM_CHANNELS, (height, width), 7, 2)
    size = (_window(stem_size[0], 3, 2, 1), _window(stem_size[1], 3, 2, 1))
    pooled = batch * STEM_CHANNELS * size[0] * size[1]
    stem = batch * STEM_CHANNELS * stem_size[0] * stem_size[1]
    # The max pool's output and its int64 indices (two elements of float32 each).
    estimate += Estimate(activation_elements=3 * pooled, flops=3 * stem)
    for plan in plans:
        size, cost = costs.block(plan, size)
        estimate += cost
    features, classes = plans[-1].out_channels, cfg["num_classes"]
    estimate += Estimate(
        parameters=features * classes + classes,
        activation_elements=batch * features,  # the pooled features the fc keeps
        flops=batch * features * size[0] * size[1] + 6 * batch * features * classes,
    )
    return ModelSignature("float", (batch, classes), estimate)


def build(spec: ResNetSpec, input_shape: Shape) -> nn.Module:
    return ResNet(
        **spec.config(),
        in_channels=input_shape[1],
        zero_init_residual=spec.zero_init_residual,
        shortcut=spec.shortcut,
        norm=spec.norm,
        norm_groups=spec.norm_groups,
    )


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    assert isinstance(module, ResNet)
    return list(module.blocks())


def init_units(spec: ResNetSpec, module: nn.Module) -> list[InitUnit]:
    """Every convolution and the fc, in registration order: the model's `init` only."""
    return [
        InitUnit(("init",), sub)
        for sub in module.modules()
        if isinstance(sub, nn.Conv2d | nn.Linear)
    ]


RESNET_KIND = ModelKind(
    signature=signature,
    build=build,
    layers=layers,
    build_uses_input_shape=True,
    init_units=init_units,
)
