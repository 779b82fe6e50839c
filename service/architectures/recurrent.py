"""Recurrent layers of the `sequential` kind: PyTorch's nn.RNN, nn.LSTM and nn.GRU.

Batch first, always: every sequence layer of the grammar takes (N, T, D), and so do these;
the initial state is zeros. Each layer subclasses PyTorch's, so that parameter names,
initialisation and the fused kernel are PyTorch's own. What ours add:

- `output`: the (N, T, dirs·H) sequence, or its last step `output[:, -1]` (many-to-one);
- dropout between stacked layers drawn from the run's generator, never the global one: in
  train mode the stack runs one layer at a time through the same kernel, in its (T, N, ·)
  layout, with a SeededDropout mask between layers. On the CPU the masks and numbers are
  bit-identical to nn.LSTM(dropout=p) after torch.manual_seed (tests/test_recurrent.py); on
  CUDA cuDNN draws its masks its own way, which cannot be reproduced: ours are nn.Dropout's;
- `probe`: what a run's gradient-through-time diagnostics record (service/diagnostics/
  through_time.py): the layer's input, its dropout masks and its output sequence.
"""

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from service.architectures.base import Estimate, Shape
from service.architectures.layer_rules import need_dims
from service.architectures.modules import SeededDropout
from service.errors import InvalidRequest, Loc

# (input, output sequence, dropout masks between layers in (T, N, ·) layout)
Probe = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], None]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # weight_ih has GATES·hidden_size rows
_STACKS: dict[str, Callable[..., tuple[torch.Tensor, ...]]] = {
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
    "LSTM": torch.lstm,
    "GRU": torch.gru,
}


class Recurrent(nn.RNNBase):
    """What our layers add to PyTorch's; mixed in before nn.RNN, nn.LSTM or nn.GRU."""

    output: str
    drop: SeededDropout | None
    probe: Probe | None

    def _extend(self, output: str) -> None:
        self.output = output
        self.drop = SeededDropout(self.dropout) if self.dropout > 0 else None
        self.probe = None  # set for a run by the through-time recorder

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _zero_state(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """nn.RNNBase's zero initial state of one stacked layer."""
        h = x.new_zeros(self.directions, x.shape[0], self.proj_size or self.hidden_size)
        if self.mode != "LSTM":
            return h
        return h, x.new_zeros(self.directions, x.shape[0], self.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks: list[torch.Tensor] = []
        if self.training and self.drop is not None:
            sequence = self._layer_by_layer(x, masks)
        else:
            sequence = super().forward(x)[0]
        if self.probe is not None:
            self.probe(x, sequence, masks)
        return sequence if self.output == "sequence" else sequence[:, -1]

    def _layer_by_layer(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """nn.RNNBase's stack, its dropout drawn by `self.drop` (what ATen's apply_layer_stack
        does, with the global generator)."""
        assert self.drop is not None
        weights = cast(list[torch.Tensor], self._flat_weights)
        per_layer = len(weights) // self.num_layers
        stack, hx = _STACKS[self.mode], self._zero_state(x)
        layer_input = x.transpose(0, 1)
        for layer in range(self.num_layers):
            own = weights[layer * per_layer : (layer + 1) * per_layer]
            args = (self.bias, 1, 0.0, True, self.bidirectional, False)
            layer_output = stack(layer_input, hx, own, *args)[0]
            if layer < self.num_layers - 1:
                # The mask alone (the dropout of ones: the same draws), kept for the replay.
                masks.append(self.drop(torch.ones_like(layer_output)))
                layer_output = layer_output * masks[-1]
            layer_input = layer_output
        return layer_input.transpose(0, 1)


class RNN(Recurrent, nn.RNN):  # type: ignore[misc]  # forward returns the output alone
    def __init__(self, spec: Any, input_size: int):
        nn.RNN.__init__(
            self, input_size, spec.hidden_size, num_layers=spec.num_layers,
            nonlinearity=spec.nonlinearity, bias=spec.bias, batch_first=True,
            dropout=spec.dropout, bidirectional=spec.bidirectional,
        )  # fmt: skip
        self._extend(spec.output)


class LSTM(Recurrent, nn.LSTM):  # type: ignore[misc]
    def __init__(self, spec: Any, input_size: int):
        nn.LSTM.__init__(
            self, input_size, spec.hidden_size, num_layers=spec.num_layers, bias=spec.bias,
            batch_first=True, dropout=spec.dropout, bidirectional=spec.bidirectional,
            proj_size=spec.proj_size,
        )  # fmt: skip
        self._extend(spec.output)


class GRU(Recurrent, nn.GRU):  # type: ignore[misc]
    def __init__(self, spec: Any, input_size: int):
        nn.GRU.__init__(
            self, input_size, spec.hidden_size, num_layers=spec.num_layers, bias=spec.bias,
            batch_first=True, dropout=spec.dropout, bidirectional=spec.bidirectional,
        )  # fmt: skip
        self._extend(spec.output)


_CLASSES: dict[str, Callable[[Any, int], Recurrent]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}

# Elements saved for backward by one stacked layer, its input included, in the run's dtype
# (bytes / max(itemsize, 4), as the budget counts them): measured in tests/test_estimates.py.
# The CPU's float32/bfloat16 LSTM runs in oneDNN, whose byte workspace holds per (batch,
# step + 1) about 12 elements per hidden unit and 6 per unit of the wider of input and output,
# both padded to 16, and 32 KB more; the other paths keep a few tensors per hidden unit and step.
_PER_HIDDEN = {"rnn": 3, "lstm": 12, "gru": 8}
_ONEDNN_PER_WIDTH, _ONEDNN_PAD, _ONEDNN_FIXED = 6, 16, 8192
# The replay's tensors per (batch, step, hidden unit) of each direction: each step's gates and
# states kept for its backward, and their gradients.
_REPLAY_PER_HIDDEN = {"rnn": 4, "lstm": 20, "gru": 14}
# What one step of one direction costs beyond its tensors, in elements of 4 bytes: the autograd
# nodes and tensor headers of the replay's step, and of the pass's step where PyTorch's CPU
# kernel loops in ATen (all but float32/bfloat16 LSTMs); measured at 6, 17 and 17.5 KB.
_STEP_ELEMENTS = {"rnn": 1_536, "lstm": 4_352, "gru": 4_608}


def _saved(spec: Any, n: int, t: int, width: int, out_width: int) -> int:
    """What one stacked layer keeps for backward, its input included (each direction copies it
    to the (T, N, D) layout)."""
    dirs, hidden = (2 if spec.bidirectional else 1), int(spec.hidden_size)
    saved = dirs * n * t * width + dirs * t * _STEP_ELEMENTS[spec.type]
    if spec.type == "lstm":
        padded, wider = max(hidden, _ONEDNN_PAD), max(width, out_width, _ONEDNN_PAD)
        per_step = _PER_HIDDEN["lstm"] * padded + _ONEDNN_PER_WIDTH * wider
        return saved + dirs * (n * (t + 1) * per_step + _ONEDNN_FIXED)
    return saved + dirs * n * t * _PER_HIDDEN[spec.type] * hidden


def recurrent_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    """(N, T, D) to (N, T, dirs·H) (`sequence`) or (N, dirs·H) (`last`), H being proj_size
    where given; the estimate counts the through-time replay too (one more forward and
    backward of the layer, unrolled)."""
    need_dims(spec, shape, loc, (3,), "(N, T, D): batch, time steps, features")
    if spec.dropout > 0 and spec.num_layers == 1:
        raise InvalidRequest.at(
            (*loc, "dropout"), "dropout acts between stacked layers: it needs num_layers ≥ 2"
        )
    proj = getattr(spec, "proj_size", 0)
    if proj >= spec.hidden_size:
        raise InvalidRequest.at((*loc, "proj_size"), "proj_size must be smaller than hidden_size")
    n, t, _ = shape
    gates, hidden, dirs = GATES[spec.type], spec.hidden_size, 2 if spec.bidirectional else 1
    out_width = proj or hidden
    rows = n * t
    params = forward = saved = replay = 0
    for layer in range(spec.num_layers):
        width = shape[2] if layer == 0 else dirs * out_width
        per_direction = gates * hidden * (width + out_width) + proj * hidden
        params += dirs * (per_direction + (2 * gates * hidden if spec.bias else 0))
        forward += dirs * (2 * rows * per_direction + 10 * rows * gates * hidden)
        saved += _saved(spec, n, t, width, out_width)
        if layer < spec.num_layers - 1 and spec.dropout > 0:
            saved += rows * dirs * out_width  # the mask
        replay += rows * (width + dirs * (_REPLAY_PER_HIDDEN[spec.type] * hidden + out_width))
        replay += dirs * t * _STEP_ELEMENTS[spec.type]
    sequence = rows * dirs * out_width
    out = (n, t, dirs * out_width) if spec.output == "sequence" else (n, dirs * out_width)
    estimate = Estimate(
        parameters=params,
        activation_elements=saved + sequence,
        flops=2 * 3 * forward,  # the pass and the replay, each forward and backward
        layers=1,
        output_elements=sequence,  # the gradient of the sequence, recorded for the replay
        workspace_elements=replay + 2 * sequence,
    )
    return out, estimate


def recurrent_build(spec: Any, shape: Shape) -> nn.Module:
    return _CLASSES[spec.type](spec, shape[2])
