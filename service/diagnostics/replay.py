"""Another pass over the run's batch, as the batch pass saw it (curvature, precision check).

- Dropout draws the batch pass's masks: its generator is rewound to where the run began.
- Batch norm in training mode normalises with the batch's statistics as before but does not
  update its running statistics (nor count the batch): the cached model's buffers stay those
  of the batch pass.
- The model's forward hooks record nothing (they still check cancellation).
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from service.diagnostics.model_cache import InitialModel


@contextlib.contextmanager
def replaying(model: InitialModel, mask_dtype: torch.dtype | None = None) -> Iterator[None]:
    """`mask_dtype`: draw dropout masks as in that dtype (the run's, for a float64 pass)."""
    model.rewind_dropout()
    norms = [
        m
        for m in model.module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for norm in norms:  # in training mode: batch statistics, running ones neither read nor set
        norm.track_running_stats = False
    for dropout in model.dropouts:
        dropout.mask_dtype = mask_dtype
    try:
        with model.capture.mute():
            yield
    finally:
        for norm in norms:
            norm.track_running_stats = True
        for dropout in model.dropouts:
            dropout.mask_dtype = None
