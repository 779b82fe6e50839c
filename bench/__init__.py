"""`make bench`: the service against plain PyTorch, measured in the same run."""
