"""Sweeps: a base request run over the cartesian product of axes."""

from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
)
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from service.schemas.common import StrictModel
from service.schemas.reports import LayerSummary, Verdict
from service.schemas.requests import LESSON_REQUEST, BasedRequest

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


class SweepRequest(BasedRequest):
    """Every combination of the axes' values is set into `base` and run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "base": LESSON_REQUEST,
                    "axes": [
                        {
                            "path": "model.layer_sizes",
                            "values": [
                                [3, 3, 3, 1],
                                [3, 3, 3, 3, 3, 1],
                                [3, 3, 3, 3, 3, 3, 3, 3, 3, 1],
                            ],
                        },
                        {"path": "model.shortcut", "values": [False, True]},
                        {"path": "seed", "values": [1, 2, 3, 4, 5]},
                    ],
                }
            ]
        }
    )

    axes: list[SweepAxis] = Field(min_length=1, max_length=8, description="distinct paths")

    @field_validator("axes")
    @classmethod
    def _distinct_paths(cls, axes: list[SweepAxis]) -> list[SweepAxis]:
        paths = [axis.path for axis in axes]
        if len(set(paths)) != len(paths):
            raise ValueError("each path can be swept by one axis only")
        return axes


class ParameterSummary(TypedDict):
    name: str
    grad_mean_abs: float | None
    grad_l2_norm: float | None


SMALL_VALUE_BYTES = 256  # axis values up to this much JSON are repeated in each run


class SweepRun(TypedDict):
    point: Annotated[dict[str, int], Field(description="path -> the index of this run's value")]
    axes: Annotated[
        dict[str, Any],
        Field(
            description="path -> the value of this run, for axes whose values are all at "
            f"most {SMALL_VALUE_BYTES} bytes of JSON (a bigger value is named by its index in "
            "`point` only)"
        ),
    ]
    loss: float | None
    verdict: Verdict
    first_to_last_ratio: float | None
    layers: list[LayerSummary]
    parameters: list[ParameterSummary]


class MeanStd(TypedDict):
    mean: float | None
    std: Annotated[float | None, Field(description="sample standard deviation; null for one value")]
    n: int


class LayerAcrossSeeds(TypedDict):
    name: str
    output_grad_mean_abs: MeanStd
    param_grad_mean_abs: MeanStd


class SeedGroup(TypedDict):
    """The runs that differ only in `seed`: statistics across seeds."""

    point: Annotated[dict[str, int], Field(description="the indices of the other axes' values")]
    axes: Annotated[dict[str, Any], Field(description="the other axes' values, where small")]
    seeds: list[Any]
    first_to_last_ratio: MeanStd
    layers: list[LayerAcrossSeeds]


class SweepReport(TypedDict):
    runs: list[SweepRun]
    across_seeds: Annotated[
        list[SeedGroup] | None,
        Field(description="present when `seed` is an axis: mean and std per layer across seeds"),
    ]
