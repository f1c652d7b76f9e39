#!/usr/bin/env bash
# The Quick start's second command (and what CI runs): install into .venv with
# the dev and formats extras, then lint, type-check and run the whole test suite.
set -euo pipefail
EXTRAS="dev,formats" source "$(dirname "$0")/venv.sh"
.venv/bin/ruff check node cli scripts tests
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
