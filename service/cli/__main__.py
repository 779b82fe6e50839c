"""`python -m service.cli`: the `gradiag` command."""

from service.cli.app import main

main()
