"""Model specs: architectures as data, a discriminated union on `kind`."""

from typing import Annotated, Literal

from pydantic import Field

from service.architectures.activations import ACTIVATIONS
from service.schemas.common import Size, StrictModel

ActivationName = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]


class MLPSpec(StrictModel):
    """The lesson's network: `layers.{i}` = Sequential(Linear, activation) per size pair."""

    kind: Literal["mlp"]
    layer_sizes: list[Size] = Field(min_length=2, max_length=4097, examples=[[3, 3, 3, 3, 3, 1]])
    activation: ActivationName = "gelu_tanh"
    shortcut: bool = Field(False, description="x = x + layer(x) where the shapes match")
    bias: bool = True


ModelSpec = Annotated[MLPSpec, Field(discriminator="kind")]
