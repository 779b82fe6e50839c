"""Tensor payloads: nested lists of numbers, or a seeded generator for big tensors.

Nested lists are checked element by element (rectangular, numbers only, finite) by the
domain before conversion, so that an error can name the exact element; the schema below
documents the accepted shape for clients and generators of test data.
"""

from typing import Annotated, Any, Literal, Self, get_args

from pydantic import Discriminator, Field, SkipValidation, Tag, WithJsonSchema, model_validator

from service.schemas.common import FiniteFloat, Seed, Size, StrictModel, example

MAX_DIMS = 8


def _nested_numbers_schema(depth: int) -> dict[str, Any]:
    if depth == 1:
        return {"type": "array", "minItems": 1, "items": {"type": "number"}}
    inner = {"anyOf": [{"type": "number"}, _nested_numbers_schema(depth - 1)]}
    return {"type": "array", "minItems": 1, "items": inner}


# Not copied by validation (the domain checks it): a compare's variants and a sweep's points
# then share the base's list, and `LiteralChecks` checks it once.
NestedNumbers = Annotated[
    SkipValidation[list[Any]],
    WithJsonSchema(
        {
            **_nested_numbers_schema(MAX_DIMS),
            "title": "NestedNumbers",
            "description": f"A rectangular nested list of finite numbers, at most {MAX_DIMS} "
            "dimensions; integers where class or token ids are expected.",
            "examples": [[[1.0, 0.0, -1.0]]],
        }
    ),
]


class _Generator(StrictModel):
    shape: list[Size] = Field(min_length=1, max_length=MAX_DIMS, examples=[[64, 3]])
    seed: Seed = 0


class NormalTensor(_Generator):
    """`torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std + mean`."""

    model_config = example(
        {"shape": [64, 3], "distribution": "normal", "mean": 0.0, "std": 1.0, "seed": 7}
    )

    distribution: Literal["normal"]
    mean: FiniteFloat = 0.0
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0


class UniformTensor(_Generator):
    """`torch.rand(shape, generator=...) * (high - low) + low`."""

    model_config = example(
        {"shape": [64, 3], "distribution": "uniform", "low": -1.0, "high": 1.0, "seed": 7}
    )

    distribution: Literal["uniform"]
    low: FiniteFloat = 0.0
    high: FiniteFloat = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError("low must be less than high")
        return self


class RandintTensor(_Generator):
    """`torch.randint(low, high, shape, generator=...)`: integer class ids or token ids."""

    model_config = example(
        {"shape": [1, 128], "distribution": "randint", "low": 0, "high": 50257, "seed": 7}
    )

    distribution: Literal["randint"]
    low: Annotated[int, Field(ge=-(2**62), le=2**62)] = 0
    high: Annotated[int, Field(ge=-(2**62), le=2**62)]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError("low must be less than high")
        return self


class ConstantTensor(_Generator):
    """A tensor of zeros or ones."""

    model_config = example({"shape": [64, 1], "distribution": "zeros"})

    distribution: Literal["zeros", "ones"]


TensorGenerator = Annotated[
    NormalTensor | UniformTensor | RandintTensor | ConstantTensor,
    Field(discriminator="distribution"),
]
# The values of `distribution`, in the union's order.
DISTRIBUTIONS: tuple[str, ...] = tuple(
    value
    for member in get_args(get_args(TensorGenerator)[0])
    for value in get_args(member.model_fields["distribution"].annotation)
)


def _payload_tag(value: Any) -> str | None:
    if isinstance(value, list):
        return "values"
    if isinstance(value, dict | NormalTensor | UniformTensor | RandintTensor | ConstantTensor):
        return "generator"
    return None


TensorPayload = Annotated[
    Annotated[NestedNumbers, Tag("values")] | Annotated[TensorGenerator, Tag("generator")],
    Discriminator(
        _payload_tag,
        custom_error_type="tensor_payload",
        custom_error_message="expected a nested list of numbers or a generator object",
    ),
]
