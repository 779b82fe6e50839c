"""Layer specs of the `sequential` model kind: a discriminated union on `type`.

Input sizes are never repeated: each layer"s input shape is inferred from the one before.
The builders and shape rules live in `service.architectures.layers` (and `.spatial`), one
entry per type.
"""

from typing import Annotated, Literal, Self, Union, get_args

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from service.architectures.activations import ACTIVATIONS
from service.schemas.common import StrictModel, example
from service.schemas.init import WeightedLayer

Size = Annotated[int, Field(ge=1, le=2**24)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
PositiveEps = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Kernel = Annotated[int, Field(ge=1, le=4096)]
Padding = Annotated[int, Field(ge=0, le=4096)]
Groups = Annotated[int, Field(ge=1, le=2**16)]
FiniteFloat = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Dim = Annotated[int, Field(ge=-8, le=7)]


def _one_inferred(sizes: list[int]) -> list[int]:
    if sizes.count(-1) > 1:
        raise ValueError("only one size can be -1")
    return sizes


# The sizes of a reshape or unflatten: one of them may be -1, inferred as in PyTorch.
Sizes = Annotated[
    list[Size | Literal[-1]],
    Field(min_length=1, max_length=7),
    AfterValidator(_one_inferred),
]


class LinearLayer(WeightedLayer):
    """nn.Linear(in_features inferred, out_features, bias)."""

    model_config = example({"type": "linear", "out_features": 64})

    type: Literal["linear"]
    out_features: Size
    bias: bool = True


class LeakyReLULayer(StrictModel):
    """nn.LeakyReLU(negative_slope)."""

    model_config = example({"type": "leaky_relu", "negative_slope": 0.2})

    type: Literal["leaky_relu"]
    negative_slope: FiniteFloat = 0.01


class ELULayer(StrictModel):
    """nn.ELU(alpha)."""

    model_config = example({"type": "elu", "alpha": 1.0})

    type: Literal["elu"]
    alpha: FiniteFloat = 1.0


class SoftplusLayer(StrictModel):
    """nn.Softplus(beta, threshold): log(1 + exp(beta·x))/beta, x where beta·x > threshold."""

    model_config = example({"type": "softplus", "beta": 1.0, "threshold": 20.0})

    type: Literal["softplus"]
    beta: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    threshold: FiniteFloat = 20.0


# Registered activations with PyTorch options, by name: a spec's fields are the keyword
# arguments of the registry's module factory.
ACTIVATION_OPTIONS: dict[str, type[StrictModel]] = {
    get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in (LeakyReLULayer, ELULayer, SoftplusLayer)
}
_WITHOUT_OPTIONS = tuple(name for name in ACTIVATIONS if name not in ACTIVATION_OPTIONS)


class ActivationLayer(StrictModel):
    """An activation module, by name (`gelu_tanh` is the course's tanh GELU)."""

    model_config = example({"type": "gelu_tanh"})

    type: Literal[_WITHOUT_OPTIONS]  # type: ignore[valid-type]


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


class GroupNormLayer(WeightedLayer):
    """nn.GroupNorm(num_groups, num_channels inferred from dim 1) on (N, C, ...)."""

    model_config = example({"type": "group_norm", "num_groups": 4})

    type: Literal["group_norm"]
    num_groups: Groups
    eps: PositiveEps = 1e-5
    affine: bool = True


class InstanceNormLayer(WeightedLayer):
    """nn.InstanceNorm1d for (N, C, L) inputs, nn.InstanceNorm2d for (N, C, H, W)."""

    model_config = example({"type": "instance_norm"})

    type: Literal["instance_norm"]
    eps: PositiveEps = 1e-5
    momentum: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1
    affine: bool = False
    track_running_stats: bool = False


class ChannelDropoutLayer(StrictModel):
    """nn.Dropout1d on (N, C, L) / nn.Dropout2d on (N, C, H, W): whole channels zeroed with
    probability `p`; masks are drawn from the request's seed."""

    model_config = example({"type": "dropout2d", "p": 0.1})

    type: Literal["dropout1d", "dropout2d"]
    p: Probability = 0.5


class ConvLayer(WeightedLayer):
    """nn.Conv1d on (N, C, L) / nn.Conv2d on (N, C, H, W); in_channels inferred."""

    model_config = example({"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1})

    type: Literal["conv1d", "conv2d"]
    out_channels: Size
    kernel_size: Kernel
    stride: Kernel = 1
    padding: Padding | Literal["same", "valid"] = Field(
        0, description="each side's padding, or 'same' (stride 1 only) or 'valid' (none)"
    )
    dilation: Kernel = 1
    groups: Groups = Field(1, description="channel groups; must divide both channel counts")
    bias: bool = True
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = Field(
        "zeros", description="what the padding holds: zeros, or the input reflected, its edge "
        "replicated, or its other end (circular)"
    )  # fmt: skip

    @model_validator(mode="after")
    def _same_needs_stride_1(self) -> Self:
        if self.padding == "same" and self.stride != 1:
            raise ValueError("padding='same' is not supported for strided convolutions")
        return self


class ConvTransposeLayer(WeightedLayer):
    """nn.ConvTranspose1d on (N, C, L) / nn.ConvTranspose2d on (N, C, H, W); in_channels
    inferred."""

    model_config = example({"type": "conv_transpose2d", "out_channels": 8, "kernel_size": 2,
                            "stride": 2})  # fmt: skip

    type: Literal["conv_transpose1d", "conv_transpose2d"]
    out_channels: Size
    kernel_size: Kernel
    stride: Kernel = 1
    padding: Padding = 0
    output_padding: Annotated[int, Field(ge=0, le=4096)] = Field(
        0, description="added to one side of the output; less than stride or dilation"
    )
    groups: Groups = 1
    bias: bool = True
    dilation: Kernel = 1

    @model_validator(mode="after")
    def _output_padding_below_stride_or_dilation(self) -> Self:
        if self.output_padding >= max(self.stride, self.dilation):
            raise ValueError("output_padding must be smaller than either stride or dilation")
        return self


class PoolLayer(StrictModel):
    """nn.MaxPool1d / nn.AvgPool1d on (N, C, L), nn.MaxPool2d / nn.AvgPool2d on (N, C, H, W);
    stride defaults to kernel_size."""

    model_config = example({"type": "max_pool2d", "kernel_size": 2})

    type: Literal["max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d"]
    kernel_size: Kernel
    stride: Kernel | None = None
    padding: Padding = 0


class AdaptivePoolLayer(StrictModel):
    """nn.AdaptiveAvgPool1d / nn.AdaptiveMaxPool1d on (N, C, L), nn.AdaptiveAvgPool2d /
    nn.AdaptiveMaxPool2d on (N, C, H, W)."""

    model_config = example({"type": "adaptive_avg_pool2d", "output_size": 1})

    type: Literal[
        "adaptive_avg_pool1d", "adaptive_max_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d"
    ]
    output_size: Size | Annotated[list[Size], Field(min_length=2, max_length=2)] = Field(
        description="the output's length, or its [height, width] (2d; an int for both)"
    )

    @model_validator(mode="after")
    def _pair_only_in_2d(self) -> Self:
        if isinstance(self.output_size, list) and self.type.endswith("1d"):
            raise ValueError("a 1d pool's output_size is one int")
        return self


class GlobalPoolLayer(StrictModel):
    """The mean or maximum of each channel: (N, C, ...) -> (N, C), as adaptive_avg_pool /
    adaptive_max_pool to size 1 then flatten compute it."""

    model_config = example({"type": "global_avg_pool"})

    type: Literal["global_avg_pool", "global_max_pool"]


class EmbeddingLayer(WeightedLayer):
    """nn.Embedding(num_embeddings, embedding_dim, padding_idx): the first layer, on integer
    token ids."""

    model_config = example({"type": "embedding", "num_embeddings": 50257, "embedding_dim": 768})

    type: Literal["embedding"]
    num_embeddings: Size
    embedding_dim: Size
    padding_idx: int | None = Field(
        None,
        description="a row zeroed at init that gets no gradient; in [-num_embeddings, "
        "num_embeddings), negative counted from the end",
    )

    @field_validator("padding_idx")
    @classmethod
    def _padding_row_exists(cls, value: int | None, info: ValidationInfo) -> int | None:
        rows = info.data.get("num_embeddings")
        if value is not None and rows is not None and not -rows <= value < rows:
            raise ValueError(f"padding_idx must lie in [-{rows}, {rows})")
        return value


class AttentionLayer(WeightedLayer):
    """Multi-head self-attention on (N, T, D), the course's MultiHeadAttention:
    W_query, W_key, W_value (bias = qkv_bias), softmax(QKᵀ/√head_dim), dropout on the
    weights, out_proj; or, with `layout: torch`, nn.MultiheadAttention."""

    model_config = example({"type": "attention", "heads": 4})

    type: Literal["attention"]
    heads: Annotated[int, Field(ge=1, le=1024)]
    causal: bool = True
    qkv_bias: bool = False
    dropout: Probability = 0.0
    layout: Literal["course", "torch"] = Field(
        "course",
        description="torch: nn.MultiheadAttention(D, heads, bias=bias, batch_first=True), its "
        "parameter names and init, causal by attn_mask; no dropout (it would draw from the "
        "global generator) and no qkv_bias",
    )
    bias: bool = Field(True, description="torch layout: in_proj_bias and out_proj.bias")

    @model_validator(mode="after")
    def _layout_options(self) -> Self:
        if self.layout == "torch" and self.dropout > 0:
            raise ValueError(
                "layout torch takes no dropout: nn.MultiheadAttention draws it from the "
                "global generator; use layout course for attention dropout"
            )
        if self.layout == "torch" and self.qkv_bias:
            raise ValueError("layout torch has `bias` (in_proj and out_proj), not qkv_bias")
        if self.layout == "course" and not self.bias:
            raise ValueError("layout course has qkv_bias; its out_proj always has a bias")
        return self


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


class ReshapeLayer(StrictModel):
    """x.reshape(N, *shape): new sizes of the dims after the batch; one may be -1."""

    model_config = example({"type": "reshape", "shape": [4, -1]})

    type: Literal["reshape"]
    shape: Sizes


class PermuteLayer(StrictModel):
    """x.permute(*dims) over all dims, the batch's included: dims[0] must be 0 (the batch
    stays first); negative dims count from the end."""

    model_config = example({"type": "permute", "dims": [0, 2, 1]})

    type: Literal["permute"]
    dims: list[Dim] = Field(min_length=2, max_length=8)


class TransposeLayer(StrictModel):
    """torch.transpose(x, dim0, dim1); neither may be the batch's dim 0."""

    model_config = example({"type": "transpose", "dim0": 1, "dim1": 2})

    type: Literal["transpose"]
    dim0: Dim
    dim1: Dim


class UnflattenLayer(StrictModel):
    """nn.Unflatten(dim, sizes): dim (not the batch's 0) split into sizes; one may be -1."""

    model_config = example({"type": "unflatten", "dim": 1, "sizes": [3, 8, 8]})

    type: Literal["unflatten"]
    dim: Dim
    sizes: Sizes


class PositionalEmbeddingLayer(WeightedLayer):
    """x + weight[arange(T)] on (N, T, D): a learned position table `weight` of shape
    (max_length, D), nn.Embedding(max_length, D) on the positions (the course's pos_emb)."""

    model_config = example({"type": "positional_embedding", "max_length": 1024})

    type: Literal["positional_embedding"]
    max_length: Size


class RecurrentFields(WeightedLayer):
    """What nn.RNN, nn.LSTM and nn.GRU share; the input is (N, T, D), batch first."""

    hidden_size: Size
    num_layers: Annotated[int, Field(ge=1, le=64)] = 1
    bias: bool = True
    bidirectional: bool = False
    dropout: Probability = Field(
        0.0, description="between stacked layers in train mode (needs num_layers ≥ 2)"
    )
    output: Literal["sequence", "last"] = Field(
        "sequence",
        description="sequence: the (N, T, dirs·H) output; last: output[:, -1] (many-to-one)",
    )


class RNNLayer(RecurrentFields):
    """nn.RNN(batch_first=True) on (N, T, D), zero initial state; input_size inferred."""

    model_config = example({"type": "rnn", "hidden_size": 32, "output": "last"})

    type: Literal["rnn"]
    nonlinearity: Literal["tanh", "relu"] = "tanh"


class LSTMLayer(RecurrentFields):
    """nn.LSTM(batch_first=True) on (N, T, D), zero initial state; input_size inferred."""

    model_config = example({"type": "lstm", "hidden_size": 32, "output": "last"})

    type: Literal["lstm"]
    proj_size: Annotated[int, Field(ge=0, le=2**24)] = Field(
        0, description="h_t = W_hr·(o_t ⊙ tanh(c_t)) of this size; 0: no projection"
    )


class GRULayer(RecurrentFields):
    """nn.GRU(batch_first=True) on (N, T, D), zero initial state; input_size inferred."""

    model_config = example({"type": "gru", "hidden_size": 32, "output": "last"})

    type: Literal["gru"]


class ResidualLayer(WeightedLayer):
    """`body(x) + shortcut` (merge add) or torch.cat([body(x), x], dim=1) (merge concat)."""

    model_config = example(
        {"type": "residual", "body": [{"type": "linear", "out_features": 64}, {"type": "relu"}]}
    )

    type: Literal["residual"]
    body: list["LayerSpec"] = Field(min_length=1, max_length=256)
    projection: bool | Literal["linear", "conv"] = Field(
        False,
        description="where the body changes the shape (merge add), the shortcut's: linear = "
        "nn.Linear over the last dim; conv = a 1x1 nn.Conv1d/Conv2d over dim 1 (channels) of "
        "(N, C, L) or (N, C, H, W); true = over dim 1 by rank, linear for (N, F) and conv for "
        "ranks 3 and 4. The body may change that one dim only; false: none",
    )
    merge: Literal["add", "concat"] = Field(
        "add",
        description="add: body(x) + shortcut; concat: torch.cat([body(x), x], dim=1), along "
        "the channels of (N, C, ...) or the features of (N, F); the other dims must match",
    )

    @model_validator(mode="after")
    def _concat_has_no_projection(self) -> Self:
        if self.merge == "concat" and self.projection is not False:
            raise ValueError("merge concat takes no projection: the other dims must match")
        return self


LayerSpec = Annotated[
    Union[  # noqa: UP007
        LinearLayer,
        ActivationLayer,
        LeakyReLULayer,
        ELULayer,
        SoftplusLayer,
        LayerNormLayer,
        RMSNormLayer,
        BatchNormLayer,
        DropoutLayer,
        FlattenLayer,
        ConvLayer,
        ConvTransposeLayer,
        PoolLayer,
        AdaptivePoolLayer,
        GlobalPoolLayer,
        GroupNormLayer,
        InstanceNormLayer,
        ChannelDropoutLayer,
        EmbeddingLayer,
        AttentionLayer,
        TransformerBlockLayer,
        ReshapeLayer,
        PermuteLayer,
        TransposeLayer,
        UnflattenLayer,
        PositionalEmbeddingLayer,
        RNNLayer,
        LSTMLayer,
        GRULayer,
        ResidualLayer,
    ],
    Field(discriminator="type"),
]

ResidualLayer.model_rebuild()

LAYER_SPECS: tuple[type[StrictModel], ...] = LayerSpec.__origin__.__args__  # type: ignore[attr-defined]
