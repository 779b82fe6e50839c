"""The run: plan and budget a request, build the model, forward + backward, statistics."""
