"""Layer specs of the `sequential` model kind: a discriminated union on `type`.

Input sizes are never repeated: each layer"s input shape is inferred from the one before.
The builders and shape rules live in `service.architectures.layers`, one entry per type.
"""

from typing import Annotated, Literal, Union

from pydantic import Field

from service.architectures.activations import ACTIVATIONS
from service.schemas.common import StrictModel, example
from service.schemas.init import WeightedLayer

Size = Annotated[int, Field(ge=1, le=2**24)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveEps = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Kernel = Annotated[int, Field(ge=1, le=4096)]
Padding = Annotated[int, Field(ge=0, le=4096)]


class LinearLayer(WeightedLayer):
    """nn.Linear(in_features inferred, out_features, bias)."""

    model_config = example({"type": "linear", "out_features": 64})

    type: Literal["linear"]
    out_features: Size
    bias: bool = True


class ActivationLayer(StrictModel):
    """An activation module, by name (`gelu_tanh` is the course's tanh GELU)."""

    model_config = example({"type": "gelu_tanh"})

    type: Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]


class LayerNormLayer(WeightedLayer):
    """nn.LayerNorm over the last dimension."""

    model_config = example({"type": "layer_norm"})

    type: Literal["layer_norm"]
    eps: PositiveEps = 1e-5
    elementwise_affine: bool = True


class RMSNormLayer(WeightedLayer):
    """nn.RMSNorm over the last dimension."""

    model_config = example({"type": "rms_norm"})

    type: Literal["rms_norm"]
    eps: PositiveEps | None = None
    elementwise_affine: bool = True


class BatchNormLayer(WeightedLayer):
    """nn.BatchNorm1d for (N, C) or (N, C, L) inputs, nn.BatchNorm2d for (N, C, H, W)."""

    model_config = example({"type": "batch_norm"})

    type: Literal["batch_norm"]
    eps: PositiveEps = 1e-5
    momentum: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1
    affine: bool = True


class DropoutLayer(StrictModel):
    """Dropout with probability `p`; masks are drawn from the request"s seed."""

    model_config = example({"type": "dropout", "p": 0.1})

    type: Literal["dropout"]
    p: Probability = 0.5


class FlattenLayer(StrictModel):
    """nn.Flatten(start_dim, end_dim)."""

    model_config = example({"type": "flatten"})

    type: Literal["flatten"]
    start_dim: Annotated[int, Field(ge=-8, le=8)] = 1
    end_dim: Annotated[int, Field(ge=-8, le=8)] = -1


class ConvLayer(WeightedLayer):
    """nn.Conv1d on (N, C, L) / nn.Conv2d on (N, C, H, W); in_channels inferred."""

    model_config = example({"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1})

    type: Literal["conv1d", "conv2d"]
    out_channels: Size
    kernel_size: Kernel
    stride: Kernel = 1
    padding: Padding = 0
    bias: bool = True


class PoolLayer(StrictModel):
    """nn.MaxPool2d / nn.AvgPool2d on (N, C, H, W); stride defaults to kernel_size."""

    model_config = example({"type": "max_pool2d", "kernel_size": 2})

    type: Literal["max_pool2d", "avg_pool2d"]
    kernel_size: Kernel
    stride: Kernel | None = None
    padding: Padding = 0


class EmbeddingLayer(WeightedLayer):
    """nn.Embedding(num_embeddings, embedding_dim): the first layer, on integer token ids."""

    model_config = example({"type": "embedding", "num_embeddings": 50257, "embedding_dim": 768})

    type: Literal["embedding"]
    num_embeddings: Size
    embedding_dim: Size


class AttentionLayer(WeightedLayer):
    """Multi-head self-attention on (N, T, D), the course's MultiHeadAttention:
    W_query, W_key, W_value (bias = qkv_bias), softmax(QKᵀ/√head_dim), dropout on the
    weights, out_proj."""

    model_config = example({"type": "attention", "heads": 4})

    type: Literal["attention"]
    heads: Annotated[int, Field(ge=1, le=1024)]
    causal: bool = True
    qkv_bias: bool = False
    dropout: Probability = 0.0


class TransformerBlockLayer(WeightedLayer):
    """The course's TransformerBlock on (N, T, D): att, ff (Linear(D, ff_mult·D), tanh GELU,
    Linear), norm1, norm2 (LayerNorm with scale/shift), dropout on each branch."""

    model_config = example({"type": "transformer_block", "heads": 4, "norm": "pre"})

    type: Literal["transformer_block"]
    heads: Annotated[int, Field(ge=1, le=1024)]
    ff_mult: Annotated[int, Field(ge=1, le=64)] = 4
    norm: Literal["pre", "post", "none"] = "pre"
    shortcut: bool = True
    dropout: Probability = 0.0
    qkv_bias: bool = False
    causal: bool = True


class ResidualLayer(WeightedLayer):
    """`body(x) + x`; when the body changes the shape, `projection: true` adds a Linear (or a
    1x1 conv for (N, C, ...) inputs) on the shortcut, otherwise the spec is refused."""

    model_config = example(
        {"type": "residual", "body": [{"type": "linear", "out_features": 64}, {"type": "relu"}]}
    )

    type: Literal["residual"]
    body: list["LayerSpec"] = Field(min_length=1, max_length=256)
    projection: bool = False


LayerSpec = Annotated[
    Union[  # noqa: UP007
        LinearLayer,
        ActivationLayer,
        LayerNormLayer,
        RMSNormLayer,
        BatchNormLayer,
        DropoutLayer,
        FlattenLayer,
        ConvLayer,
        PoolLayer,
        EmbeddingLayer,
        AttentionLayer,
        TransformerBlockLayer,
        ResidualLayer,
    ],
    Field(discriminator="type"),
]

ResidualLayer.model_rebuild()

LAYER_SPECS: tuple[type[StrictModel], ...] = LayerSpec.__origin__.__args__  # type: ignore[attr-defined]
