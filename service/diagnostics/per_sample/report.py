"""The per-sample part of one run: record during the batch pass, then compute and report."""

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from service.architectures.base import Estimate
from service.diagnostics.model_cache import InitialModel
from service.diagnostics.per_sample.findings import findings, noisy_layers
from service.diagnostics.per_sample.gradients import per_sample_parts
from service.diagnostics.per_sample.recorder import Recorder
from service.diagnostics.per_sample.statistics import summarise
from service.schemas.reports import ParameterPerSample, PerSampleReport


@dataclass
class PerSampleResult:
    report: PerSampleReport
    parameters: list[ParameterPerSample]  # per named parameter, in order
    findings: list[str]


class PerSample:
    """`recording()` around the forward and backward pass, `keep_output` on the model's
    output; then `result()`."""

    def __init__(self, model: InitialModel, estimate: Estimate):
        self.model = model
        self.recorder = Recorder(model.module, model.dropouts)
        self.activation_elements = estimate.activation_elements  # for the vmap path's chunks

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        with self.recorder.recording():
            yield

    def keep_output(self, output: torch.Tensor) -> None:
        self.recorder.keep_output(output)

    def result(self, inputs: torch.Tensor, cancel: threading.Event | None) -> PerSampleResult:
        model, batch = self.model, len(inputs)
        try:
            parts, vmapped = per_sample_parts(
                self.recorder,
                model.named_parameters,
                inputs,
                model.capture.mute,
                cancel,
                self.activation_elements // batch,
            )
        finally:
            self.recorder.release()
        with torch.no_grad():
            means = [
                torch.zeros_like(p.sum_sq) if param.grad is None else param.grad.to(p.sum_sq.dtype)
                for p, (_, param) in zip(parts, model.named_parameters, strict=True)
            ]
            summary = summarise(parts, means, batch, vmapped)
        layers = [name for name, _ in model.layers]
        noisy = noisy_layers(summary.parameters, model.owners, layers)
        return PerSampleResult(summary.report, summary.parameters, findings(summary.report, noisy))
