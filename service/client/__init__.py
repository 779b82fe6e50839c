"""Client-side helpers of gradiag: specs from the user's own PyTorch modules."""

from service.client.spec import UnsupportedModule, spec_from_module

__all__ = ["UnsupportedModule", "spec_from_module"]
