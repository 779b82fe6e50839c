"""The model-kind registry: `model.kind` -> how to plan and build it."""

from service.architectures.base import ModelKind
from service.architectures.gpt import GPT_KIND
from service.architectures.mlp import MLP_KIND
from service.architectures.sequential import SEQUENTIAL_KIND

MODEL_KINDS: dict[str, ModelKind] = {
    "mlp": MLP_KIND,
    "sequential": SEQUENTIAL_KIND,
    "gpt": GPT_KIND,
}
