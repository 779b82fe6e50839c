"""Independent plain-PyTorch implementations the service is checked against.

Written as a user would write them (the course's code), with `torch.manual_seed` and plain
module construction; nothing here imports the service.
"""

import torch
from torch import nn


class GELU(nn.Module):
    """The course's GELU, verbatim."""

    def forward(self, x):
        return (
            0.5
            * x
            * (
                1
                + torch.tanh(
                    torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
                )
            )
        )


class ExampleDeepNeuralNetwork(nn.Module):
    """The lesson's network, verbatim but for the activation and bias switches."""

    def __init__(self, layer_sizes, use_shortcut, activation=GELU, bias=True):
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(layer_sizes[i], layer_sizes[i + 1], bias=bias), activation()
                )
                for i in range(len(layer_sizes) - 1)
            ]
        )

    def forward(self, x):
        for layer in self.layers:
            output = layer(x)
            if self.use_shortcut and x.shape == output.shape:
                x = x + output
            else:
                x = output
        return x


ACTIVATIONS = {
    "gelu_tanh": GELU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}

LOSSES = {
    "mse": lambda: nn.MSELoss(),
    "l1": lambda: nn.L1Loss(),
    "smooth_l1": lambda: nn.SmoothL1Loss(),
    "cross_entropy": lambda: nn.CrossEntropyLoss(),
    "bce_with_logits": lambda: nn.BCEWithLogitsLoss(),
}


def run_mlp(spec, seed, inputs, target, loss, dtype=torch.float32, device="cpu"):
    """Plain PyTorch: seed, build, forward, backward. Returns the model, loss and layer outputs."""
    torch.manual_seed(seed)
    model = ExampleDeepNeuralNetwork(
        spec["layer_sizes"],
        spec.get("shortcut", False),
        ACTIVATIONS[spec["activation"]],
        spec.get("bias", True),
    ).to(device, dtype)
    outputs = []

    def keep(module, args, output):
        output.retain_grad()
        outputs.append(output)

    for layer in model.layers:
        layer.register_forward_hook(keep)
    out = model(inputs)
    value = out.sum() if loss == "sum" else LOSSES[loss]()(out, target)
    value.backward()
    return model, value, outputs
