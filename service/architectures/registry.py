"""The model-kind registry: `model.kind` -> how to check and build it."""

from service.architectures.base import ModelKind
from service.architectures.gpt import GPT_KIND
from service.architectures.layers import LAYER_TYPES
from service.architectures.mlp import MLP_KIND
from service.architectures.resnet import RESNET_KIND
from service.architectures.sequential import SEQUENTIAL_KIND
from service.diagnostics.losses import LOSSES
from service.schemas.init import SCHEME_NAMES
from service.schemas.tensors import DISTRIBUTIONS

MODEL_KINDS: dict[str, ModelKind] = {
    "mlp": MLP_KIND,
    "sequential": SEQUENTIAL_KIND,
    "gpt": GPT_KIND,
    "resnet": RESNET_KIND,
}

# The values each discriminator of a request takes, for errors that name a wrong one.
TAG_VALUES: dict[str, tuple[str, ...]] = {
    "kind": tuple(MODEL_KINDS),
    "type": tuple(LAYER_TYPES),
    "distribution": DISTRIBUTIONS,
    "name": tuple(LOSSES),
    "scheme": SCHEME_NAMES,
}
