"""torchvision's ResNet (torchvision/models/resnet.py): same modules, names, forward and
initial weights, with two diagnostics switches:

- `shortcut=False` drops every block's shortcut add, identity and projection alike, and
  builds no `downsample` modules: He et al.'s (2016) "plain" network of the same layers;
- `norm` is torchvision's `norm_layer`: BatchNorm2d (its default), GroupNorm(norm_groups, C),
  or none (nn.Identity; the convolutions keep bias=False, so that the weights and the draws
  are those of the normalised network and only the normalisation differs).

Weights are those that `torch.manual_seed(seed)` then torchvision's constructor give: each
module's default initialisation at construction (a block's downsample before the block's
convolutions, the fc after every convolution), then the constructor's loop redraws each
convolution with kaiming_normal_(mode="fan_out", nonlinearity="relu") in registration order.
`ResNet.reset_seeded` replays the construction draws, the convolutions redraw themselves as
`initialise` reaches them.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from service.architectures.init import SeededInit
from service.architectures.init import _linear_like as default_draw

EXPANSION = {"basic": 1, "bottleneck": 4}
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, stride) of layer1..layer4
STEM_CHANNELS = 64


@dataclass(frozen=True)
class BlockPlan:
    """One block's channels: what the builder makes and the shape rule costs."""

    stage: int  # 1..4
    index: int  # in its stage
    in_channels: int
    width: int  # of the inner convolutions
    out_channels: int
    stride: int
    downsample: bool

    @property
    def name(self) -> str:
        return f"layer{self.stage}.{self.index}"


def block_plans(
    block: str, layers: Sequence[int], groups: int, width_per_group: int, shortcut: bool
) -> list[BlockPlan]:
    """torchvision's `_make_layer`, stage by stage: the first block of a stage strides and,
    where the shape changes, projects its shortcut."""
    expansion, inplanes, plans = EXPANSION[block], STEM_CHANNELS, []
    for stage, ((planes, stride), blocks) in enumerate(zip(STAGES, layers, strict=True), 1):
        width = planes if block == "basic" else int(planes * (width_per_group / 64.0)) * groups
        for index in range(blocks):
            first = index == 0
            project = first and (stride != 1 or inplanes != planes * expansion) and shortcut
            plans.append(
                BlockPlan(
                    stage,
                    index,
                    inplanes,
                    width,
                    planes * expansion,
                    stride if first else 1,
                    project,
                )
            )
            inplanes = planes * expansion
    return plans


class KaimingConv2d(nn.Conv2d, SeededInit):
    """A bias-free convolution that torchvision's init loop redraws."""

    def reset_seeded(self, generator: torch.Generator) -> None:
        nn.init.kaiming_normal_(
            self.weight, mode="fan_out", nonlinearity="relu", generator=generator
        )


class Classifier(nn.Linear, SeededInit):
    """The fc: drawn by `ResNet.reset_seeded`, where torchvision's constructor draws it."""

    def reset_seeded(self, generator: torch.Generator) -> None:
        pass


class ZeroInitBatchNorm2d(nn.BatchNorm2d, SeededInit):
    """A block's last norm under zero_init_residual: weight 0, so the block starts as its
    shortcut."""

    def reset_seeded(self, generator: torch.Generator) -> None:
        self.reset_parameters()
        nn.init.zeros_(self.weight)


class ZeroInitGroupNorm(nn.GroupNorm, SeededInit):
    """GroupNorm's counterpart of ZeroInitBatchNorm2d."""

    def reset_seeded(self, generator: torch.Generator) -> None:
        self.reset_parameters()
        nn.init.zeros_(self.weight)


NormFactory = Callable[[int, bool], nn.Module]  # (channels, zero weight) -> module


def norm_factory(norm: str, groups: int) -> NormFactory:
    def make(channels: int, zero: bool) -> nn.Module:
        if norm == "none":
            return nn.Identity()
        if norm == "group":
            return (ZeroInitGroupNorm if zero else nn.GroupNorm)(groups, channels)
        return (ZeroInitBatchNorm2d if zero else nn.BatchNorm2d)(channels)

    return make


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return KaimingConv2d(c_in, c_out, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return KaimingConv2d(c_in, c_out, 1, stride, bias=False)


class Block(nn.Module):
    """The residual add and the last ReLU, shared by both block types."""

    downsample: nn.Sequential | None
    shortcut: bool
    relu: nn.Module

    def convolutions(self) -> list[nn.Conv2d]:  # pragma: no cover - abstract
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class BasicBlock(Block):
    """conv1 3x3 (stride), bn1, relu, conv2 3x3, bn2, downsample."""

    def __init__(
        self, plan: BlockPlan, groups: int, norm: NormFactory, zero_init: bool, shortcut: bool
    ):
        super().__init__()
        self.conv1 = conv3x3(plan.in_channels, plan.width, plan.stride)
        self.bn1 = norm(plan.width, False)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(plan.width, plan.out_channels)
        self.bn2 = norm(plan.out_channels, zero_init)
        self.downsample = _downsample(plan, norm)
        self.shortcut = shortcut

    def convolutions(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(Block):
    """conv1 1x1, bn1, conv2 3x3 (stride, groups), bn2, conv3 1x1 (x4), bn3, relu,
    downsample."""

    def __init__(
        self, plan: BlockPlan, groups: int, norm: NormFactory, zero_init: bool, shortcut: bool
    ):
        super().__init__()
        self.conv1 = conv1x1(plan.in_channels, plan.width)
        self.bn1 = norm(plan.width, False)
        self.conv2 = conv3x3(plan.width, plan.width, plan.stride, groups)
        self.bn2 = norm(plan.width, False)
        self.conv3 = conv1x1(plan.width, plan.out_channels)
        self.bn3 = norm(plan.out_channels, zero_init)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(plan, norm)
        self.shortcut = shortcut

    def convolutions(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def _downsample(plan: BlockPlan, norm: NormFactory) -> nn.Sequential | None:
    if not plan.downsample:
        return None
    return nn.Sequential(
        conv1x1(plan.in_channels, plan.out_channels, plan.stride), norm(plan.out_channels, False)
    )


class ResNet(nn.Module, SeededInit):
    """conv1 7x7/2, bn1, relu, maxpool 3/2, layer1..layer4, avgpool, fc."""

    def __init__(
        self,
        *,
        block: str,
        layers: Sequence[int],
        num_classes: int,
        groups: int,
        width_per_group: int,
        in_channels: int,
        zero_init_residual: bool = False,
        shortcut: bool = True,
        norm: str = "batch",
        norm_groups: int = 32,
    ):
        super().__init__()
        make_norm = norm_factory(norm, norm_groups)
        self.conv1 = KaimingConv2d(in_channels, STEM_CHANNELS, 7, 2, padding=3, bias=False)
        self.bn1 = make_norm(STEM_CHANNELS, False)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        kind = BasicBlock if block == "basic" else Bottleneck
        plans = block_plans(block, layers, groups, width_per_group, shortcut)
        for stage in range(1, len(STAGES) + 1):
            blocks = (
                kind(p, groups, make_norm, zero_init_residual, shortcut)
                for p in plans
                if p.stage == stage
            )
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = Classifier(plans[-1].out_channels, num_classes)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{stage}") for stage in range(1, len(STAGES) + 1)]

    def blocks(self) -> Iterator[tuple[str, Block]]:
        for stage, blocks in enumerate(self.stages(), 1):
            for index, block in enumerate(blocks):
                assert isinstance(block, Block)
                yield f"layer{stage}.{index}", block

    def reset_seeded(self, generator: torch.Generator) -> None:
        """torchvision's construction-time draws: the convolutions' default initialisation in
        construction order (their values are redrawn, but the draws advance the stream),
        then the fc's, which it keeps."""
        skip = lambda: None  # noqa: E731 - no cancellation checks within this one step
        default_draw(self.conv1, generator, skip)
        for _, block in self.blocks():
            if block.downsample is not None:  # _make_layer makes it before the block
                default_draw(block.downsample[0], generator, skip)
            for conv in block.convolutions():
                default_draw(conv, generator, skip)
        default_draw(self.fc, generator, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
