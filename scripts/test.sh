#!/usr/bin/env bash
# The Quick start's second command (and what CI runs): install into .venv with
# the dev and formats extras, then lint, type-check and run the whole test suite.
set -euo pipefail
EXTRAS="dev,formats" source "$(dirname "$0")/venv.sh"
# The status page's test drives a real browser: Debian's chromium and its driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
.venv/bin/ruff check node cli scripts tests
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
