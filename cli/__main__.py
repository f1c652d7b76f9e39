"""`python -m cli ...` is `distnode ...` (the harness starts daemons this way)."""

from cli.main import entry

entry()
