"""The `gradiag` command: `serve`, `worker` and `openapi` run the service; `diagnose`,
`compare`, `sweep`, `plot` and `capabilities` call it (a server, or in this process)."""

from service.cli.app import create_cli, main

__all__ = ["create_cli", "main"]
