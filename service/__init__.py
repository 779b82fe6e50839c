"""gradiag: gradient diagnostics for neural-network architectures posted as data."""

__version__ = "0.1.0"
