"""Model specs: architectures as data, a discriminated union on `kind`."""

from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, get_args

from pydantic import Field, model_validator

from service.architectures.activations import ACTIVATIONS
from service.schemas.common import Size, StrictModel, example
from service.schemas.init import MODEL_INIT, Init
from service.schemas.layers import LayerSpec

if TYPE_CHECKING:  # the names are known at run time only, from the registry
    ActivationName = str
else:
    ActivationName = Literal[tuple(ACTIVATIONS)]


class MLPSpec(StrictModel):
    """The lesson's network: `layers.{i}` = Sequential(Linear, activation) per size pair."""

    model_config = example(
        {
            "kind": "mlp",
            "layer_sizes": [3, 3, 3, 3, 3, 1],
            "activation": "gelu_tanh",
            "shortcut": True,
        }
    )

    kind: Literal["mlp"]
    layer_sizes: list[Size] = Field(min_length=2, max_length=4097, examples=[[3, 3, 3, 3, 3, 1]])
    activation: ActivationName = "gelu_tanh"
    shortcut: bool = Field(False, description="x = x + layer(x) where the shapes match")
    bias: bool = True
    init: Init | None = Field(None, description=MODEL_INIT)


_CNN = [
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"type": "batch_norm"},
    {"type": "relu"},
    {"type": "max_pool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 10},
]


class SequentialSpec(StrictModel):
    """Layers applied in order, named `layers.{i}`; each input size is inferred."""

    model_config = example({"kind": "sequential", "layers": _CNN})

    kind: Literal["sequential"]
    layers: list[LayerSpec] = Field(min_length=1, max_length=4096, examples=[_CNN])
    init: Init | None = Field(None, description=MODEL_INIT)


GPT_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
                   "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False},
    "gpt2-medium": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1024, "n_heads": 16,
                    "n_layers": 24, "drop_rate": 0.1, "qkv_bias": False},
    "gpt2-large": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1280, "n_heads": 20,
                   "n_layers": 36, "drop_rate": 0.1, "qkv_bias": False},
    "gpt2-xl": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1600, "n_heads": 25,
                "n_layers": 48, "drop_rate": 0.1, "qkv_bias": False},
    "gpt-tiny": {"vocab_size": 96, "context_length": 32, "emb_dim": 64, "n_heads": 4,
                 "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False},
    "gpt-micro": {"vocab_size": 16, "context_length": 8, "emb_dim": 8, "n_heads": 2,
                  "n_layers": 1, "drop_rate": 0.0, "qkv_bias": False},
}  # fmt: skip

GPT_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate",
                   "qkv_bias")  # fmt: skip


class GPTSpec(StrictModel):
    """The course's GPT-2 style model (chapter 4). A `preset` fills the config; fields given
    next to it override the preset's. Without a preset every config key is required."""

    model_config = example(
        {"kind": "gpt", "preset": "gpt2-small", "n_layers": 4, "shortcut": True, "norm": "pre"}
    )

    kind: Literal["gpt"]
    preset: Literal[tuple(GPT_PRESETS)] | None = None  # type: ignore[valid-type]
    vocab_size: Size | None = None
    context_length: Size | None = None
    emb_dim: Size | None = None
    n_heads: Annotated[int, Field(ge=1, le=1024)] | None = None
    n_layers: Annotated[int, Field(ge=1, le=1024)] | None = None
    drop_rate: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = None
    qkv_bias: bool | None = None
    shortcut: bool = Field(True, description="the blocks' shortcut connections")
    norm: Literal["pre", "post", "none"] = Field(
        "pre", description="LayerNorm before each branch (course), after the sum, or none"
    )
    init: Init | None = Field(
        None,
        description="the init of tok_emb, pos_emb, each block (its linears' weights, then "
        "their biases; its LayerNorms keep ones and zeros) and out_head, in that order",
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        config = self.config()
        missing = [k for k in GPT_CONFIG_KEYS if config.get(k) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: give them or a preset")
        return self

    def config(self) -> dict[str, Any]:
        """The resolved config: the preset's values, overridden by the fields given."""
        base = dict(GPT_PRESETS[self.preset]) if self.preset else {}
        given = {k: getattr(self, k) for k in GPT_CONFIG_KEYS if getattr(self, k) is not None}
        return base | given


RESNET_PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": "basic", "layers": [2, 2, 2, 2]},
    "resnet34": {"block": "basic", "layers": [3, 4, 6, 3]},
    "resnet50": {"block": "bottleneck", "layers": [3, 4, 6, 3]},
    "resnet101": {"block": "bottleneck", "layers": [3, 4, 23, 3]},
    "resnet152": {"block": "bottleneck", "layers": [3, 8, 36, 3]},
    "resnext50_32x4d": {"block": "bottleneck", "layers": [3, 4, 6, 3], "groups": 32,
                        "width_per_group": 4},
    "wide_resnet50_2": {"block": "bottleneck", "layers": [3, 4, 6, 3], "width_per_group": 128},
}  # fmt: skip

# torchvision's defaults for what neither a preset nor the request gives.
RESNET_DEFAULTS: dict[str, Any] = {"num_classes": 1000, "groups": 1, "width_per_group": 64}
RESNET_CONFIG_KEYS = ("block", "layers", "num_classes", "groups", "width_per_group")
StageBlocks = Annotated[int, Field(ge=1, le=1024)]


class ResNetSpec(StrictModel):
    """torchvision's ResNet on images (N, C, H, W), C inferred from the input: parameter
    names, layout and initialisation are torchvision's. A `preset` fills the config; fields
    given next to it override the preset's. Without a preset `block` and `layers` are
    required; the other keys default to torchvision's."""

    model_config = example(
        {"kind": "resnet", "preset": "resnet18", "num_classes": 10, "shortcut": False}
    )

    kind: Literal["resnet"]
    preset: Literal[tuple(RESNET_PRESETS)] | None = None  # type: ignore[valid-type]
    block: Literal["basic", "bottleneck"] | None = Field(
        None, description="BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3, 1x1, x4 wide)"
    )
    layers: Annotated[list[StageBlocks], Field(min_length=4, max_length=4)] | None = Field(
        None, description="blocks per stage, layer1..layer4"
    )
    num_classes: Size | None = None
    groups: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="the 3x3 convolution's groups (ResNeXt); bottleneck only"
    )
    width_per_group: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="a bottleneck's width per group at 64 planes (64: ResNet)"
    )
    zero_init_residual: bool = Field(
        False, description="each block's last norm starts with weight 0 (torchvision's flag)"
    )
    shortcut: bool = Field(
        True,
        description="the blocks' shortcut adds; false drops them and the downsample "
        "projections: He et al.'s plain network",
    )
    norm: Literal["batch", "group", "none"] = Field(
        "batch", description="BatchNorm2d (torchvision's), GroupNorm(norm_groups, C), or none"
    )
    norm_groups: Annotated[int, Field(ge=1, le=4096)] = Field(
        32, description="GroupNorm's number of groups; must divide every channel count"
    )
    init: Init | None = Field(
        None,
        description="drawn after torchvision's initialisation, on every convolution and the fc "
        "in registration order (conv1, layer1.0.conv1, …, downsample convs where they are "
        "registered, fc); the norm layers keep their ones and zeros",
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        config = self.config()
        missing = [k for k in ("block", "layers") if config.get(k) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: give them or a preset")
        return self

    def config(self) -> dict[str, Any]:
        """The resolved config: defaults, the preset's values, then the fields given."""
        base = RESNET_DEFAULTS | (RESNET_PRESETS[self.preset] if self.preset else {})
        given = {k: getattr(self, k) for k in RESNET_CONFIG_KEYS if getattr(self, k) is not None}
        return base | given


ModelSpec = Annotated[MLPSpec | SequentialSpec | GPTSpec | ResNetSpec, Field(discriminator="kind")]
# The union's members (Annotated[union, discriminator] -> union -> its classes).
MODEL_SPECS: tuple[type[StrictModel], ...] = get_args(get_args(ModelSpec)[0])
