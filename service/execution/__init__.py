"""Execution: the backend interface, the in-process backend, and the device policy."""
