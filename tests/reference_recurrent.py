"""An RNN, LSTM or GRU unrolled by the equations of PyTorch's documentation, on the weights of
an nn.RNN / nn.LSTM / nn.GRU: every hidden state h_t is a tensor of its own that retains its
gradient, the total derivative ∂L/∂h_t. Nothing here imports the service."""

import torch
from torch.nn import functional as F


def _step(mode, x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    gi = x_t @ w_ih.T + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
    if mode == "RNN_TANH":
        return torch.tanh(gi + gh), c
    if mode == "RNN_RELU":
        return torch.relu(gi + gh), c
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else h @ w_hr.T), c
    r_i, z_i, n_i = gi.chunk(3, 1)  # GRU
    r_h, z_h, n_h = gh.chunk(3, 1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h, c


def unrolled(rnn, x):
    """`rnn`'s output sequence for the batch-first `x`, and its hidden states
    {(layer, direction): [h_0, ..., h_{T-1}]}. In train mode the dropout between layers is
    F.dropout of the (T, N, ·) layer output, drawn from the global generator as nn.LSTM's."""
    batch, steps, _ = x.shape
    directions = 2 if rnn.bidirectional else 1
    states, layer_input = {}, x
    for layer in range(rnn.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            weights = [getattr(rnn, name + suffix, None) for name in names]
            h = x.new_zeros(batch, weights[1].shape[1])
            c = x.new_zeros(batch, rnn.hidden_size)
            hidden = [None] * steps
            for t in range(steps) if direction == 0 else reversed(range(steps)):
                h, c = _step(rnn.mode, layer_input[:, t], h, c, *weights)
                h.retain_grad()
                hidden[t] = h
            states[(layer, direction)] = hidden
            outputs.append(torch.stack(hidden, 1))
        output = torch.cat(outputs, 2)
        if layer < rnn.num_layers - 1 and rnn.training and rnn.dropout > 0:
            dropped = F.dropout(output.transpose(0, 1).contiguous(), rnn.dropout, training=True)
            output = dropped.transpose(0, 1)
        layer_input = output
    return layer_input, states
