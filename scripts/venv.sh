# Sourced by demo.sh and test.sh: make .venv (if missing) and install distnode into it.
# EXTRAS selects the optional dependencies ("", "formats", "dev,formats", ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
# An editable install compiles nothing; where PYTHONDONTWRITEBYTECODE is set,
# every daemon would compile distnode's modules again at each start.
.venv/bin/python -m compileall -q node cli
