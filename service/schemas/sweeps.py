"""Sweeps: a base request run over the cartesian product of axes."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.schemas.common import StrictModel
from service.schemas.requests import LESSON_REQUEST

AxisPath = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$",
        max_length=200,
        description="a dotted path into the request; integer segments index lists",
        examples=["model.shortcut", "seed", "model.layers.0.out_features"],
    ),
]


class SweepAxis(StrictModel):
    path: AxisPath
    values: list[Any] = Field(min_length=1, max_length=256)


class SweepRequest(StrictModel):
    """Every combination of the axes' values is set into `base` and run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "base": LESSON_REQUEST,
                    "axes": [
                        {
                            "path": "model.layer_sizes",
                            "values": [[3, 3, 3, 1], [3, 3, 3, 3, 3, 1], [3] * 9 + [1]],
                        },
                        {"path": "model.shortcut", "values": [False, True]},
                        {"path": "seed", "values": [1, 2, 3, 4, 5]},
                    ],
                }
            ]
        }
    )

    base: dict[str, Any] = Field(description="a diagnostics request, possibly incomplete")
    axes: list[SweepAxis] = Field(min_length=1, max_length=8, description="distinct paths")

    @field_validator("axes")
    @classmethod
    def _distinct_paths(cls, axes: list[SweepAxis]) -> list[SweepAxis]:
        paths = [axis.path for axis in axes]
        if len(set(paths)) != len(paths):
            raise ValueError("each path can be swept by one axis only")
        return axes


class LayerSummary(BaseModel):
    name: str
    output_grad_mean_abs: float | None
    param_grad_mean_abs: float | None
    relative_to_last: float | None
    verdict: str


class ParameterSummary(BaseModel):
    name: str
    grad_mean_abs: float | None
    grad_l2_norm: float | None


class SweepRun(BaseModel):
    axes: dict[str, Any] = Field(description="path -> the value of this run")
    loss: float | None
    verdict: str
    first_to_last_ratio: float | None
    layers: list[LayerSummary]
    parameters: list[ParameterSummary]


class MeanStd(BaseModel):
    mean: float | None
    std: float | None = Field(description="sample standard deviation; null for one value")
    n: int


class LayerAcrossSeeds(BaseModel):
    name: str
    output_grad_mean_abs: MeanStd
    param_grad_mean_abs: MeanStd


class SeedGroup(BaseModel):
    """The runs that differ only in `seed`: statistics across seeds."""

    axes: dict[str, Any] = Field(description="the values of the other axes")
    seeds: list[Any]
    first_to_last_ratio: MeanStd
    layers: list[LayerAcrossSeeds]


class SweepReport(BaseModel):
    runs: list[SweepRun]
    across_seeds: list[SeedGroup] | None = Field(
        description="present when `seed` is an axis: mean and std per layer across seeds"
    )
