"""Base model and constrained scalar types shared by every schema."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**64 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="a seed in [0, 2**64)")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Size = Annotated[int, Field(ge=1, le=2**31 - 1)]


class StrictModel(BaseModel):
    """Strict: no coercion (no "1.5" or true for a number), no unknown fields, no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def example(value: dict[str, Any]) -> ConfigDict:
    """Model config adding one example to the model's JSON schema (and so to the docs)."""
    return ConfigDict(json_schema_extra={"examples": [value]})
