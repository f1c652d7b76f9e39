#!/usr/bin/env bash
# The Quick start's first command: install into .venv, then run the main job
# (a local 3-node cluster, a real job, a leader kill, the job completing).
set -euo pipefail
EXTRAS="formats" source "$(dirname "$0")/venv.sh"
exec .venv/bin/python scripts/demo.py "$@"
