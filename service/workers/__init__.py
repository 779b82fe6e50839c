"""Execution: the worker interface, its backends, and the device policy."""
