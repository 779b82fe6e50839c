"""Summary statistics of many tensors: one entry point, one path per device class.

- `native`: the CPU kernel built at install time (`kernel.c`), every tensor read once;
- `tiled`: accelerators, a dozen launches whatever the number of tensors;
- `reference`: plain torch, one tensor at a time; the fallback and the tests' oracle.

Every path produces rows in the layout of `rows`; `finish` derives the statistics once.
"""

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from service.diagnostics.stats.native import NativeKernel
from service.diagnostics.stats.reference import reference_rows
from service.diagnostics.stats.rows import COLUMNS, Rows, finish
from service.diagnostics.stats.tiled import tiled_rows
from service.schemas.reports import Stats

Path = Literal["native", "tiled", "reference"]


class Summary(NamedTuple):
    stats: list[Stats]
    path: Path  # which path computed them, for the report's provenance


class Statistics:
    """The statistics of one process: the native kernel where it loaded, else the reference
    on the CPU; the tiled path on accelerators."""

    def __init__(self, kernel: NativeKernel | None, state: str):
        self.kernel = kernel
        self.state = state  # ready | off | why the kernel is not used (for /readyz)

    @torch.no_grad()
    def summarise(
        self, tensors: Sequence[torch.Tensor], known: Mapping[int, np.ndarray] | None = None
    ) -> Summary:
        """Statistics of every tensor, in order; all on one device. `known` holds rows already
        computed (`side_row`), by `id` of their tensor."""
        if tensors and tensors[0].device.type != "cpu":
            return Summary(finish(tensors, tiled_rows(tensors)), "tiled")
        known = known or {}
        todo = [i for i, t in enumerate(tensors) if id(t) not in known]
        chosen = [tensors[i] for i in todo]
        computed = self.kernel.rows(chosen) if self.kernel is not None else None
        path: Path = "native"
        if computed is None:
            computed, path = reference_rows(chosen), "reference"
        if len(todo) == len(tensors):
            rows: Rows = computed
        else:
            rows = np.empty((len(tensors), COLUMNS))
            rows[todo] = computed
            for i, t in enumerate(tensors):
                if id(t) in known:
                    rows[i] = known[id(t)]
        return Summary(finish(tensors, rows), path)

    def side_row(self, tensor: torch.Tensor) -> np.ndarray | None:
        """The row of one tensor computed serially on a side thread, or None: the run thread
        computes it in `summarise`."""
        return self.kernel.side_row(tensor) if self.kernel is not None else None
