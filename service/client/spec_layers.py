"""PyTorch's own modules -> layer specs of the `sequential` grammar, with their options checked.

Each converter returns the layer's spec or raises UnsupportedModule naming the option the
grammar lacks. Activations are recognised by class, or, for a parameterless module of the
user's own (the course's GELU), by what it computes.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from service.architectures.activations import ACTIVATIONS, GELUTanh, make_activation
from service.architectures.modules import ChannelDropout, GlobalPool, SeededDropout
from service.architectures.sequence_layers import PositionalEmbedding, TorchAttention
from service.architectures.shape_layers import Permute, Reshape, Transpose
from service.client.spec_check import UnsupportedModule, describe, is_torch_class
from service.schemas.layers import ACTIVATION_OPTIONS

Spec = dict[str, Any]


def require(ok: bool, path: str, module: nn.Module, option: str, grammar: str) -> None:
    """Refuse `module` unless `ok`: "<path>: nn.X with <option>: <what the grammar has>"."""
    if not ok:
        raise UnsupportedModule(path, f"{describe(module)} with {option}: {grammar}")


def _one(values: Any) -> int | None:
    """The value of an int or of a tuple whose entries are all equal; None otherwise."""
    entries = (values,) if isinstance(values, int) else tuple(values)
    return entries[0] if len(set(entries)) == 1 else None


# activations ---------------------------------------------------------------------------------
_PLAIN: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.Identity: "identity",
    GELUTanh: "gelu_tanh",
}
# PyTorch's activations with options, which their layer specs take (ACTIVATION_OPTIONS).
_WITH_OPTIONS: dict[type[nn.Module], str] = {
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.Softplus: "softplus",
}
_PROBE = torch.linspace(-5, 5, 101).reshape(1, 101)


def _probe(module: nn.Module) -> str | None:
    """The registered activation a parameterless module computes on [-5, 5], if any."""
    try:
        with torch.no_grad():
            out = module(_PROBE.clone())  # a copy: the module may work in place
    except Exception:
        return None
    if not isinstance(out, torch.Tensor) or out.shape != _PROBE.shape:
        return None
    for name in ACTIVATIONS:
        with torch.no_grad():
            expected = make_activation(name)(_PROBE)
        if torch.allclose(out.float(), expected, rtol=1e-5, atol=1e-6):
            return name
    return None


def activation_name(module: Any, path: str) -> str | None:
    """The grammar's name of an activation module, whatever its options; None when it is
    none."""
    cls = type(module)
    if cls in _PLAIN:
        return _PLAIN[cls]
    if cls in _WITH_OPTIONS:
        return _WITH_OPTIONS[cls]
    if cls is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if is_torch_class(module) or any(True for _ in module.children()):
        return None
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    return _probe(module)


def activation_spec(module: Any, path: str) -> Spec | None:
    """The layer spec of an activation module, with the options that differ from PyTorch's
    defaults (nn.LeakyReLU(0.2) -> negative_slope 0.2); None when it is none."""
    name = activation_name(module, path)
    if name is None:
        return None
    spec: Spec = {"type": name}
    if type(module) in _WITH_OPTIONS:
        for option, field in ACTIVATION_OPTIONS[name].model_fields.items():
            value = None if option == "type" else float(getattr(module, option))
            if value is not None and value != field.default:
                spec[option] = value
    return spec


# the other leaves ----------------------------------------------------------------------------
def _linear(m: nn.Linear, path: str) -> Spec:
    return {"type": "linear", "out_features": m.out_features, "bias": m.bias is not None}


def _uniform(m: nn.Module, path: str, option: str, grammar: str) -> int:
    """An int option, or a tuple option equal in every dimension, as one int."""
    value = _one(getattr(m, option))
    require(value is not None, path, m, f"{option}={getattr(m, option)}", grammar)
    assert value is not None
    return value


def _kernel_stride_dilation(m: nn.Module, path: str) -> dict[str, int]:
    return {
        "kernel_size": _uniform(m, path, "kernel_size", "the grammar's kernels are square"),
        "stride": _uniform(m, path, "stride", "the grammar has one stride for all dimensions"),
        "dilation": _uniform(
            m, path, "dilation", "the grammar has one dilation for all dimensions"
        ),
    }


def _conv(m: nn.Conv1d | nn.Conv2d, path: str) -> Spec:
    kind = "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"
    options = _kernel_stride_dilation(m, path)
    if isinstance(m.padding, str):  # 'same' or 'valid', as the grammar names them
        padding: int | str = m.padding
    else:
        padding = _uniform(m, path, "padding", "the grammar has one padding for all sides")
    return {
        "type": kind,
        "out_channels": m.out_channels,
        **options,
        "padding": padding,
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _conv_transpose(m: nn.ConvTranspose1d | nn.ConvTranspose2d, path: str) -> Spec:
    kind = "conv_transpose1d" if isinstance(m, nn.ConvTranspose1d) else "conv_transpose2d"
    sides = "the grammar has one padding for all sides"
    return {
        "type": kind,
        "out_channels": m.out_channels,
        **_kernel_stride_dilation(m, path),
        "padding": _uniform(m, path, "padding", sides),
        "output_padding": _uniform(m, path, "output_padding", sides),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


_POOLS: dict[type[nn.Module], str] = {
    nn.MaxPool1d: "max_pool1d",
    nn.AvgPool1d: "avg_pool1d",
    nn.MaxPool2d: "max_pool2d",
    nn.AvgPool2d: "avg_pool2d",
}


def _pool(m: nn.MaxPool1d | nn.AvgPool1d | nn.MaxPool2d | nn.AvgPool2d, path: str) -> Spec:
    kind = _POOLS[type(m)]
    kernel, stride, padding = _one(m.kernel_size), _one(m.stride), _one(m.padding)
    require(
        kernel is not None,
        path,
        m,
        f"kernel_size={m.kernel_size}",
        "the grammar's kernels are square",
    )
    require(
        stride is not None,
        path,
        m,
        f"stride={m.stride}",
        "the grammar has one stride for all dimensions",
    )
    require(
        padding is not None,
        path,
        m,
        f"padding={m.padding}",
        "the grammar has one padding for all sides",
    )
    require(not m.ceil_mode, path, m, "ceil_mode=True", "the grammar rounds output sizes down")
    if isinstance(m, nn.MaxPool1d | nn.MaxPool2d):
        require(
            _one(m.dilation) == 1, path, m, f"dilation={m.dilation}", "the grammar has dilation 1"
        )
        require(
            not m.return_indices,
            path,
            m,
            "return_indices=True",
            "the grammar's pools return the output only",
        )
    else:
        included = m.count_include_pad
        require(
            included,
            path,
            m,
            "count_include_pad=False",
            "the grammar counts the padding in the mean",
        )
        divisor = getattr(m, "divisor_override", None)  # AvgPool1d has none
        require(
            divisor is None,
            path,
            m,
            f"divisor_override={divisor}",
            "the grammar divides by the window",
        )
    spec: Spec = {"type": kind, "kernel_size": kernel, "padding": padding}
    return spec if stride == kernel else spec | {"stride": stride}


_ADAPTIVE: dict[type[nn.Module], str] = {
    nn.AdaptiveAvgPool1d: "adaptive_avg_pool1d",
    nn.AdaptiveMaxPool1d: "adaptive_max_pool1d",
    nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
    nn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
}


def _adaptive_pool(m: Any, path: str) -> Spec:
    sizes = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
    given = None not in sizes
    require(given, path, m, f"output_size={m.output_size}", "the grammar's sizes are given")
    indices = getattr(m, "return_indices", False)
    require(not indices, path, m, "return_indices=True", "the grammar's pools return the output")
    size = _one(sizes)
    return {"type": _ADAPTIVE[type(m)], "output_size": list(sizes) if size is None else size}


def _group_norm(m: nn.GroupNorm, path: str) -> Spec:
    return {
        "type": "group_norm",
        "num_groups": m.num_groups,
        "eps": float(m.eps),
        "affine": m.affine,
    }


def _instance_norm(m: nn.InstanceNorm1d | nn.InstanceNorm2d, path: str) -> Spec:
    momentum = m.momentum
    require(
        momentum is not None, path, m, "momentum=None", "the grammar's instance_norm has a float"
    )
    assert momentum is not None
    return {
        "type": "instance_norm",
        "eps": float(m.eps),
        "momentum": float(momentum),
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _layer_norm(m: nn.LayerNorm, path: str) -> Spec:
    shape = tuple(m.normalized_shape)
    require(
        len(shape) == 1,
        path,
        m,
        f"normalized_shape={shape}",
        "the grammar normalises the last dimension",
    )
    affine = m.elementwise_affine
    require(
        not affine or m.bias is not None,
        path,
        m,
        "bias=False",
        "the grammar's layer_norm has a bias with its weight",
    )
    return {"type": "layer_norm", "eps": float(m.eps), "elementwise_affine": affine}


def _rms_norm(m: nn.RMSNorm, path: str) -> Spec:
    shape = tuple(m.normalized_shape)
    require(
        len(shape) == 1,
        path,
        m,
        f"normalized_shape={shape}",
        "the grammar normalises the last dimension",
    )
    eps = None if m.eps is None else float(m.eps)
    return {"type": "rms_norm", "eps": eps, "elementwise_affine": m.elementwise_affine}


def _batch_norm(m: nn.BatchNorm1d | nn.BatchNorm2d, path: str) -> Spec:
    momentum = m.momentum
    require(
        momentum is not None,
        path,
        m,
        "momentum=None",
        "the grammar's batch_norm has a float momentum",
    )
    tracked = m.track_running_stats
    require(tracked, path, m, "track_running_stats=False", "the grammar keeps running statistics")
    assert momentum is not None
    return {
        "type": "batch_norm",
        "eps": float(m.eps),
        "momentum": float(momentum),
        "affine": m.affine,
    }


def dropout_p(m: Any, path: str) -> float:
    """The rate of a dropout module (0 when there is none)."""
    if m is None:
        return 0.0
    if type(m) not in (nn.Dropout, SeededDropout):
        raise UnsupportedModule(path, f"{describe(m)} is not nn.Dropout")
    return float(m.p)


def _embedding(m: nn.Embedding, path: str) -> Spec:
    options = {
        "max_norm": m.max_norm,
        "scale_grad_by_freq": m.scale_grad_by_freq or None,
        "sparse": m.sparse or None,
    }
    for option, value in options.items():
        require(
            value is None,
            path,
            m,
            f"{option}={value}",
            "the grammar's embedding has PyTorch's default",
        )
    spec: Spec = {
        "type": "embedding",
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
    }
    return spec if m.padding_idx is None else spec | {"padding_idx": m.padding_idx}


def _unflatten(m: nn.Unflatten, path: str) -> Spec:
    sizes = list(m.unflattened_size)
    named = not all(isinstance(size, int) for size in sizes)
    require(not named, path, m, "named sizes", "the grammar's unflatten takes int sizes")
    return {"type": "unflatten", "dim": m.dim, "sizes": sizes}


def _torch_attention(m: TorchAttention, path: str) -> Spec:
    bias = m.in_proj_bias is not None
    return {"type": "attention", "heads": m.num_heads, "causal": m.causal, "layout": "torch",
            "bias": bias}  # fmt: skip


def _activation(m: nn.Module, path: str) -> Spec:
    spec = activation_spec(m, path)
    assert spec is not None  # only registered for activation classes
    return spec


LEAVES: dict[type[nn.Module], Callable[[Any, str], Spec]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.ConvTranspose1d: _conv_transpose,
    nn.ConvTranspose2d: _conv_transpose,
    **dict.fromkeys(_POOLS, _pool),
    **dict.fromkeys(_ADAPTIVE, _adaptive_pool),
    GlobalPool: lambda m, path: {"type": f"global_{m.mode}_pool"},
    nn.GroupNorm: _group_norm,
    nn.InstanceNorm1d: _instance_norm,
    nn.InstanceNorm2d: _instance_norm,
    nn.LayerNorm: _layer_norm,
    nn.RMSNorm: _rms_norm,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.Dropout: lambda m, path: {"type": "dropout", "p": dropout_p(m, path)},
    SeededDropout: lambda m, path: {"type": "dropout", "p": dropout_p(m, path)},
    nn.Dropout1d: lambda m, path: {"type": "dropout1d", "p": float(m.p)},
    nn.Dropout2d: lambda m, path: {"type": "dropout2d", "p": float(m.p)},
    ChannelDropout: lambda m, path: {"type": f"dropout{m.spatial}d", "p": float(m.p)},
    nn.Flatten: lambda m, path: {"type": "flatten", "start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.Unflatten: _unflatten,
    nn.Embedding: _embedding,
    # The service's own modules of the grammar (nn.MultiheadAttention itself returns a tuple).
    Reshape: lambda m, path: {"type": "reshape", "shape": list(m.shape)},
    Permute: lambda m, path: {"type": "permute", "dims": list(m.dims)},
    Transpose: lambda m, path: {"type": "transpose", "dim0": m.dim0, "dim1": m.dim1},
    PositionalEmbedding: lambda m, path: {
        "type": "positional_embedding",
        "max_length": m.weight.shape[0],
    },
    TorchAttention: _torch_attention,
    **{cls: _activation for cls in (*_PLAIN, *_WITH_OPTIONS, nn.GELU)},
}

SUPPORTED = (
    "nn.Sequential and nn.ModuleList, nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, "
    "nn.ConvTranspose2d, nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool2d, nn.AvgPool2d, "
    "nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, "
    "nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, "
    "nn.LayerNorm, nn.RMSNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, "
    "nn.Flatten, nn.Unflatten, nn.Embedding, nn.ReLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Tanh, "
    "nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Identity, a parameterless module computing one of "
    "these activations, the course's LayerNorm, MultiHeadAttention, TransformerBlock, GPTModel "
    "and ExampleDeepNeuralNetwork, a Residual(body, projection) that adds or concatenates "
    "(dim 1), and modules whose forward applies such children in registration order"
)


def not_in_grammar(path: str, module: nn.Module) -> UnsupportedModule:
    return UnsupportedModule(
        path, f"{describe(module)} is not in the grammar; supported: {SUPPORTED}"
    )
