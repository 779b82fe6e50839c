"""Which device runs requests by default, and which ones a request may name."""

from dataclasses import dataclass

import torch

from service.config import Settings, canonical_device


def _available(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "mps":
        return torch.backends.mps.is_available()
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return torch.cuda.is_available() and index < torch.cuda.device_count()
    return False


def _resolve(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class DevicePolicy:
    default: str
    allowed: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings, local: bool = True) -> "DevicePolicy":
        """Resolve `auto`; refuse at start-up a configured device this machine lacks. Where
        runs execute elsewhere (`local=False`: Celery workers), the API process neither
        probes nor initialises a device: `auto` is the CPU, and the workers have the rest."""
        resolve = _resolve if local else (lambda d: "cpu" if d == "auto" else d)
        default = canonical_device(resolve(settings.device))
        allowed = {canonical_device(resolve(d)) for d in settings.allowed_devices}
        allowed = allowed or {default, "cpu"}
        allowed.add(default)
        missing = sorted(d for d in allowed if local and not _available(d))
        if missing:
            raise ValueError(f"configured devices not available on this machine: {missing}")
        return cls(default, frozenset(allowed))

    def usable(self) -> bool:
        """A tiny allocation on the default device succeeds."""
        try:
            torch.zeros(1, device=self.default).add_(1)
        except RuntimeError:
            return False
        return True
