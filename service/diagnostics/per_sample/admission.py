"""At plan time: whether per-sample gradients are defined for a request, and what they cost.

Refused (PerSampleUndefined, 422) where samples are not independent: a batch of one, or batch
norm in training mode (each sample is normalised with the batch's statistics). Otherwise the
run's estimate grows by what the per-sample pass adds, so that the budget refuses a request
that would exceed it before it starts:
- flops: another forward and backward's worth (a per-sample weight gradient costs as much as
  the batch's; the vmap path runs a forward and a backward) and 8 per parameter and sample
  (squares, dot products, sums);
- retained output gradients: those of every layer with parameters, at most the saved
  activations;
- scratch: Σ_i g_i² and the GSNR of every parameter, a chunk of per-sample gradients and
  their squares (at most 3 CHUNK_ELEMENTS, or a tensor's worth where one sample's exceeds
  it), and one sample's activations (the vmap path).
"""

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from service.architectures.base import Estimate, ModelSignature, Shape
from service.diagnostics.per_sample.parts import CHUNK_ELEMENTS
from service.errors import Loc, PerSampleUndefined
from service.schemas.requests import DiagnosticsRequest


def _batch_norms(layers: Sequence[Any], loc: Loc) -> Iterator[Loc]:
    for index, layer in enumerate(layers):
        if layer.type == "batch_norm":
            yield (*loc, index)
        elif layer.type == "residual":
            yield from _batch_norms(layer.body, (*loc, index, "body"))


def admit(
    request: DiagnosticsRequest, model: ModelSignature, input_shape: Shape, loc: Loc
) -> ModelSignature:
    """The signature with the per-sample pass's costs added, or PerSampleUndefined."""
    batch = input_shape[0]
    if batch < 2:
        raise PerSampleUndefined.at(
            (*loc, "input"),
            f"per_sample needs a batch of at least 2 samples; the input's first dimension "
            f"(the batch) is {batch}",
        )
    if request.mode == "train" and request.model.kind == "sequential":
        found = next(_batch_norms(request.model.layers, (*loc, "model", "layers")), None)
        if found is not None:
            raise PerSampleUndefined.at(
                found,
                "per_sample: batch norm in training mode normalises each sample with the "
                "batch's statistics, so the samples interact and per-sample gradients are "
                'undefined; send "mode": "eval" (running statistics) or leave per_sample out',
            )
    estimate = model.estimate
    parameters = estimate.parameters
    scratch = 2 * parameters + 3 * max(CHUNK_ELEMENTS, parameters)
    extra = Estimate(
        flops=estimate.flops + 8 * batch * parameters,
        output_elements=estimate.activation_elements,
        workspace_elements=scratch + estimate.activation_elements // batch,
    )
    return replace(model, estimate=estimate + extra)
