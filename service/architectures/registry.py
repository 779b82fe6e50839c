"""The model-kind registry: `model.kind` -> how to plan and build it."""

from service.architectures.base import ModelKind
from service.architectures.mlp import MLP_KIND

MODEL_KINDS: dict[str, ModelKind] = {"mlp": MLP_KIND}
