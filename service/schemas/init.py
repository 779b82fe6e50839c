"""Initialisation as data: the `torch.nn.init` schemes a layer's or a model's `init` names.

A scheme is an object discriminated on `scheme`, with `torch.nn.init`'s own parameters and
defaults, or its bare name where every parameter keeps its default. The schemes' draws are
in `service.architectures.init_schemes`, one entry per name.
"""

import math
from typing import Annotated, Any, ClassVar, Literal, Self, Union

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from service.schemas.common import StrictModel

# Bounds that keep every draw finite in float32 and every torch call valid.
Value = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Spread = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Gain = Annotated[
    float,
    Field(ge=0, le=1e6, allow_inf_nan=False, description="scales the drawn values"),
]
Nonlinearity = Literal[
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
]  # fmt: skip
FanMode = Literal["fan_in", "fan_out"]

# trunc_normal_ redraws the whole tensor until every element is kept: fewer kept per round
# than this would take too many rounds over a large tensor.
MIN_TRUNC_ACCEPTANCE = 0.25


class Scheme(StrictModel):
    """One `torch.nn.init` call."""

    # Computes fan-in and fan-out, or a QR factorisation: needs a tensor of >= 2 dimensions.
    needs_matrix: ClassVar[bool] = False


class XavierUniform(Scheme):
    """nn.init.xavier_uniform_: U(-a, a), a = gain·√(6 / (fan_in + fan_out))."""

    needs_matrix: ClassVar[bool] = True
    scheme: Literal["xavier_uniform"]
    gain: Gain = 1.0


class XavierNormal(Scheme):
    """nn.init.xavier_normal_: N(0, std²), std = gain·√(2 / (fan_in + fan_out))."""

    needs_matrix: ClassVar[bool] = True
    scheme: Literal["xavier_normal"]
    gain: Gain = 1.0


class _Kaiming(Scheme):
    needs_matrix: ClassVar[bool] = True
    a: Value = Field(0.0, description="the negative slope of a leaky_relu nonlinearity")
    mode: FanMode = Field(
        "fan_in", description="fan_in keeps the forward pass's variance, fan_out the backward's"
    )
    nonlinearity: Nonlinearity = Field(
        "leaky_relu", description="the nonlinearity after the layer, for its gain"
    )


class KaimingUniform(_Kaiming):
    """nn.init.kaiming_uniform_: U(-b, b), b = gain·√(3 / fan)."""

    scheme: Literal["kaiming_uniform"]


class KaimingNormal(_Kaiming):
    """nn.init.kaiming_normal_: N(0, std²), std = gain / √fan."""

    scheme: Literal["kaiming_normal"]


class Orthogonal(Scheme):
    """nn.init.orthogonal_: a (semi-)orthogonal matrix from the QR factorisation of a
    normal draw, trailing dimensions flattened, times gain."""

    needs_matrix: ClassVar[bool] = True
    scheme: Literal["orthogonal"]
    gain: Gain = 1.0


def _trunc_acceptance(mean: float, std: float, a: float, b: float) -> float:
    """The share of its proposals that torch's trunc_normal_ keeps per round: normal
    proposals where [a, b] holds more than 0.3 of the mass, else uniform ones on [a, b]
    kept in proportion to the density (relative to its peak on [a, b])."""

    def cdf(x: float) -> float:
        return (1.0 + math.erf((x - mean) / std / math.sqrt(2.0))) / 2.0

    mass = cdf(b) - cdf(a)
    if mass > 0.3:
        return mass
    mode = max(a, min(mean, b))
    z = abs(mode - mean) / std
    if mass <= 0 or z > 30:  # [a, b] beyond 30 std of the mean: nothing representable kept
        return 0.0
    peak = math.exp(-0.5 * z**2)
    return mass * std * math.sqrt(2 * math.pi) / ((b - a) * peak)


class TruncNormal(Scheme):
    """nn.init.trunc_normal_: N(mean, std²) restricted to [a, b] (absolute bounds, not
    multiples of std), drawn by rejection over the whole tensor."""

    scheme: Literal["trunc_normal"]
    mean: Value = 0.0
    std: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    a: Value = Field(-2.0, description="the lower cut-off")
    b: Value = Field(2.0, description="the upper cut-off, above a")

    @model_validator(mode="after")
    def _interval(self) -> Self:
        if self.a >= self.b:
            raise ValueError(f"a ({self.a}) must be below b ({self.b})")
        kept = _trunc_acceptance(self.mean, self.std, self.a, self.b)
        if kept < MIN_TRUNC_ACCEPTANCE:
            raise ValueError(
                f"[a, b] lies too far in the tail of N(mean, std²): trunc_normal_ would keep "
                f"{kept:.2g} of its draws per round (at least {MIN_TRUNC_ACCEPTANCE} needed)"
            )
        return self


class Normal(Scheme):
    """nn.init.normal_: N(mean, std²)."""

    scheme: Literal["normal"]
    mean: Value = 0.0
    std: Spread = 1.0


class Uniform(Scheme):
    """nn.init.uniform_: U(a, b)."""

    scheme: Literal["uniform"]
    a: Value = 0.0
    b: Value = Field(1.0, description="at least a")

    @model_validator(mode="after")
    def _interval(self) -> Self:
        if self.a > self.b:
            raise ValueError(f"a ({self.a}) must not exceed b ({self.b})")
        return self


class Constant(Scheme):
    """nn.init.constant_: every element `val`."""

    scheme: Literal["constant"]
    val: Value


class Zeros(Scheme):
    """nn.init.zeros_."""

    scheme: Literal["zeros"]


class Ones(Scheme):
    """nn.init.ones_."""

    scheme: Literal["ones"]


WEIGHT_SCHEMES: tuple[type[Scheme], ...] = (
    XavierUniform, XavierNormal, KaimingUniform, KaimingNormal, Orthogonal, TruncNormal,
    Normal, Uniform, Constant, Zeros, Ones,
)  # fmt: skip
BIAS_SCHEMES = tuple(s for s in WEIGHT_SCHEMES if not s.needs_matrix)


def scheme_name(cls: type[Scheme]) -> str:
    return str(cls.model_fields["scheme"].annotation.__args__[0])  # type: ignore[union-attr]


SCHEME_NAMES = tuple(scheme_name(s) for s in WEIGHT_SCHEMES)
# Names that may stand alone: every parameter of the scheme has a default.
BARE_NAMES = tuple(
    scheme_name(s)
    for s in WEIGHT_SCHEMES
    if all(not f.is_required() for n, f in s.model_fields.items() if n != "scheme")
)


def _named(allowed: tuple[type[Scheme], ...]) -> BeforeValidator:
    """Accept a bare name for its scheme with defaults; refuse a name outside `allowed`
    with the names that are in it."""
    names = tuple(scheme_name(s) for s in allowed)
    choices = ", ".join(names)

    def check(value: Any) -> Any:
        name = value.get("scheme") if isinstance(value, dict) else value
        if not isinstance(name, str):
            return value  # pydantic says what is missing or wrong
        if name not in names:
            why = (
                f"'{name}' needs a tensor of >= 2 dimensions; a bias is 1-d"
                if name in SCHEME_NAMES
                else f"{name[:64]!r} is not an init scheme"
            )
            raise ValueError(f"{why}: one of {choices}")
        if isinstance(value, str):
            if name not in BARE_NAMES:
                raise ValueError(f"'{name}' has a required parameter: write it as an object")
            return {"scheme": name}
        return value

    bare = Literal[tuple(n for n in names if n in BARE_NAMES)]  # type: ignore[valid-type]
    union = Annotated[Union[allowed], Field(discriminator="scheme")]  # type: ignore[valid-type]  # noqa: UP007
    return BeforeValidator(check, json_schema_input_type=bare | union)


WeightScheme = Annotated[
    Union[WEIGHT_SCHEMES],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="scheme"),
    _named(WEIGHT_SCHEMES),
]
BiasScheme = Annotated[
    Union[BIAS_SCHEMES],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="scheme"),
    _named(BIAS_SCHEMES),
]


class Init(StrictModel):
    """`torch.nn.init` calls on a layer's parameters, made after every layer has drawn its
    PyTorch default, in the order of the spec, from the same seeded stream: what
    `torch.manual_seed(seed)`, plain construction, then these calls give. A key left out
    keeps PyTorch's default draw; `{}` keeps every default (a layer's way out of a model's
    default)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"weight": "xavier_uniform", "bias": "zeros"},
        {"weight": {"scheme": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}},
    ]})  # fmt: skip

    weight: WeightScheme | None = Field(
        None,
        description="applied to each parameter whose name starts or ends with `weight`, in "
        "registration order (weight_ih_l0, weight_hh_l0, … of a recurrent layer; "
        "in_proj_weight, out_proj.weight of the torch attention layout; attention: W_query, "
        "W_key, W_value, out_proj; transformer_block: those, then "
        "ff's two linears; its LayerNorms' scale and shift are not weights); xavier, kaiming "
        "and orthogonal need weights of >= 2 dimensions, so not a norm layer's",
    )
    bias: BiasScheme | None = Field(
        None,
        description="applied to each parameter whose name starts or ends with `bias`, after the "
        "weights; a bias is 1-d, so only normal, trunc_normal, uniform, constant, zeros, ones",
    )


LAYER_INIT = (
    "this layer's own init, replacing the model's `init` for it as a whole; the layer must "
    "have the parameters it names (a norm without affine parameters has none; a residual's "
    "own parameters are its projection's, its body's layers take their own)"
)
MODEL_INIT = (
    "the default init of every layer with a weight of >= 2 dimensions (linear, conv, "
    "embedding, attention, transformer_block, a residual's projection) that has no `init` "
    "of its own; norm layers keep their ones and zeros, layers without parameters ignore it"
)


class WeightedLayer(StrictModel):
    """A layer spec with parameters: it takes an `init`."""

    init: Init | None = Field(None, description=LAYER_INIT)
