"""Gradient flow through time: ‖∂L/∂h_t‖ of each recurrent layer at every step, per stacked
layer and direction.

∂L/∂h_t is the total derivative: through the output at t, every later step and every later
layer (with a loss on the last step only, the direct gradient is 0 for t < T-1; this is not).
The fused kernels never expose h_t, so after the main backward each recurrent layer is
replayed unrolled from its recorded input, with detached weights, the recorded dropout masks
and the recorded ∂L/∂(output sequence) fed back; a hook on each h_t reads its gradient. The
parameters' gradients stay the kernel's; the replay costs about one more forward and backward
of the layer (counted in its estimate) and checks for cancellation at every step.
"""

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.recurrent import Recurrent
from service.diagnostics.verdicts import SEVERITY
from service.errors import raise_if_cancelled
from service.schemas.reports import (
    Direction,
    RecurrentType,
    ThroughTimeReport,
    ThroughTimeSeries,
    Verdict,
)
from service.schemas.requests import Thresholds

_TYPES: dict[str, RecurrentType] = {
    "RNN_TANH": "rnn",
    "RNN_RELU": "rnn",
    "LSTM": "lstm",
    "GRU": "gru",
}
_CELLS: dict[str, Callable[..., Any]] = {
    "RNN_TANH": torch.rnn_tanh_cell,
    "RNN_RELU": torch.rnn_relu_cell,
    "LSTM": torch.lstm_cell,
    "GRU": torch.gru_cell,
}


@dataclass
class _Record:
    """What one recurrent layer saw in the run's pass."""

    name: str
    layer: Recurrent
    input: torch.Tensor | None = None
    masks: list[torch.Tensor] = field(default_factory=list)
    grad: torch.Tensor | None = None  # ∂L/∂(output sequence), (N, T, dirs·H)

    def probe(self, x: torch.Tensor, sequence: torch.Tensor, masks: list[torch.Tensor]) -> None:
        self.input, self.masks = x.detach(), [m.detach() for m in masks]
        if sequence.requires_grad:
            keep = functools.partial(setattr, self, "grad")
            sequence.register_hook(keep)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Measured:
    reports: list[ThroughTimeReport]
    findings: list[str]

    @property
    def verdicts(self) -> list[Verdict]:
        return [report["verdict"] for report in self.reports]


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    return min(verdicts, key=SEVERITY.index, default="healthy")


class ThroughTime:
    """Records the recurrent layers of `model` during a run's pass, then measures."""

    def __init__(self, model: nn.Module, cancel: threading.Event | None = None):
        self.records = [_Record(n, m) for n, m in model.named_modules() if isinstance(m, Recurrent)]
        self.check = functools.partial(raise_if_cancelled, cancel)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        for record in self.records:
            record.layer.probe = record.probe
        try:
            yield
        finally:
            for record in self.records:
                record.layer.probe = None

    def measure(self, thresholds: Thresholds) -> Measured:
        """Replay each recorded layer; the records are dropped afterwards."""
        records, self.records = self.records, []
        reports, findings = [], []
        for record in records:
            if record.input is None or record.grad is None:
                continue
            norms = replay(record.layer, record.input, record.masks, record.grad, self.check)
            report, said = _judge(record.name, record.layer, norms, thresholds)
            reports.append(report)
            findings.extend(said)
        return Measured(reports, findings)


def _norm(g: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = torch.linalg.vector_norm(
        g, dtype=torch.promote_types(g.dtype, torch.float32)
    )
    return norm


Cell = Callable[[torch.Tensor, Any], Any]  # (x_t, state) -> state; state is h or (h, c)


def _cell(mode: str, weights: dict[str, torch.Tensor], suffix: str) -> Cell:
    """One step of one direction of one stacked layer: PyTorch's cell op on its weights; an
    LSTM with projections (which lstm_cell refuses) by its equations, h = W_hr(o·tanh(c))."""
    w_ih, w_hh = weights[f"weight_ih{suffix}"], weights[f"weight_hh{suffix}"]
    b_ih, b_hh = weights.get(f"bias_ih{suffix}"), weights.get(f"bias_hh{suffix}")
    w_hr = weights.get(f"weight_hr{suffix}")
    if w_hr is None:
        op = _CELLS[mode]
        return lambda x, state: op(x, state, w_ih, w_hh, b_ih, b_hh)

    def projected(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> Any:
        gates = F.linear(x, w_ih, b_ih) + F.linear(state[0], w_hh, b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return F.linear(torch.sigmoid(o) * torch.tanh(c), w_hr), c

    return projected


def replay(
    layer: Recurrent,
    x: torch.Tensor,
    masks: Sequence[torch.Tensor],
    grad: torch.Tensor,
    check: Callable[[], None] = lambda: None,
) -> list[list[torch.Tensor]]:
    """‖∂L/∂h_t‖₂ (over batch and hidden units) for t = 0..T-1, per stacked layer and
    direction (forward, then reverse), from `layer`'s input `x` (N, T, D), its dropout masks
    (T, N, ·) and ∂L/∂(its output sequence) `grad`."""
    weights = {name: p.detach() for name, p in layer.named_parameters()}
    steps, batch = x.shape[1], x.shape[0]
    series: list[list[torch.Tensor]] = []
    with torch.enable_grad():
        layer_input = x
        for index in range(layer.num_layers):
            outputs = []
            for direction in range(layer.directions):
                cell = _cell(layer.mode, weights, f"_l{index}" + ("_reverse" if direction else ""))
                # A zero initial state that requires grad: the steps are recorded without the
                # weights' gradients.
                h0 = x.new_zeros(batch, layer.proj_size or layer.hidden_size).requires_grad_()
                state: Any = (
                    h0 if layer.mode != "LSTM" else (h0, x.new_zeros(batch, layer.hidden_size))
                )
                norms: list[torch.Tensor] = [torch.zeros(())] * steps
                hidden: list[torch.Tensor] = [h0] * steps
                for t in range(steps) if direction == 0 else range(steps - 1, -1, -1):
                    check()
                    state = cell(layer_input[:, t], state)
                    hidden[t] = state[0] if isinstance(state, tuple) else state
                    keep = functools.partial(_keep_norm, norms, t, check)
                    hidden[t].register_hook(keep)  # type: ignore[no-untyped-call]
                outputs.append(torch.stack(hidden, 1))
                series.append(norms)
            layer_input = torch.cat(outputs, 2) if len(outputs) > 1 else outputs[0]
            if index < len(masks):
                layer_input = layer_input * masks[index].transpose(0, 1)
        # Σ output·grad has gradient `grad` exactly; backward(output, grad) would import sympy
        # (seconds, once per process) to check the shapes.
        torch.autograd.backward((layer_input * grad).sum())
    check()
    return series


def _keep_norm(
    norms: list[torch.Tensor], t: int, check: Callable[[], None], g: torch.Tensor
) -> None:
    check()
    norms[t] = _norm(g)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _judge(
    name: str, layer: Recurrent, norms: list[list[torch.Tensor]], thresholds: Thresholds
) -> tuple[ThroughTimeReport, list[str]]:
    """Per series: the ratio and horizon from its last processed step back, and a verdict."""
    kind, steps = _TYPES[layer.mode], len(norms[0])
    values = torch.stack([torch.stack(n) for n in norms]).tolist()  # one transfer
    series: list[ThroughTimeSeries] = []
    verdicts: list[Verdict] = []
    findings: list[str] = []
    for i, grad_norms in enumerate(values):
        stacked, reverse = divmod(i, layer.directions)
        direction: Direction = "reverse" if reverse else "forward"
        processed = grad_norms[::-1] if reverse else grad_norms  # in the order of processing
        first, last = processed[0], processed[-1]
        ratio = first / last if last != 0 and math.isfinite(last) else None
        horizon = None
        if last != 0 and math.isfinite(last):
            floor = thresholds.vanishing * last
            horizon = next((k for k, v in enumerate(reversed(processed)) if v < floor), steps)
        verdict: Verdict = "healthy"
        where = f"{name} ({kind}) layer {stacked} {direction}"
        if not all(math.isfinite(v) for v in grad_norms):
            verdict = "non_finite"
            findings.append(f"{where}: NaN or infinite gradients through time")
        elif not any(grad_norms):
            verdict = "dead"
            findings.append(f"{where}: no gradient reaches its hidden states")
        elif ratio is None:  # e.g. the reverse direction under a head on output[:, -1]
            findings.append(
                f"{where}: no gradient at its last step (t = {0 if reverse else steps - 1})"
            )
        elif ratio < thresholds.vanishing:
            verdict = "vanishing"
            findings.append(
                f"{where}: ‖∂L/∂h‖ at its first step is {ratio:.3g}x its last step's (vanishing "
                f"below {thresholds.vanishing:g}x); it stays above for {horizon} of {steps} steps"
            )
        elif ratio > thresholds.exploding:
            verdict = "exploding"
            findings.append(
                f"{where}: ‖∂L/∂h‖ at its first step is {ratio:.3g}x its last step's "
                f"(exploding above {thresholds.exploding:g}x)"
            )
        verdicts.append(verdict)
        series.append(
            {
                "layer": stacked,
                "direction": direction,
                "grad_norms": [_finite(v) for v in grad_norms],
                "first_to_last_ratio": _finite(ratio) if ratio is not None else None,
                "horizon": horizon,
            }
        )
    overall = worst(verdicts)
    if overall == "healthy":
        findings.append(
            f"{name} ({kind}): the gradient through its {steps} steps stays within "
            f"[{thresholds.vanishing:g}, {thresholds.exploding:g}]x of its last step's"
        )
    report: ThroughTimeReport = {
        "layer": name,
        "type": kind,
        "steps": steps,
        "series": series,
        "verdict": overall,
    }
    return report, findings
