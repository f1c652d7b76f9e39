# Sourced by demo.sh and test.sh: make .venv (if missing) and install distnode into it.
# EXTRAS selects the optional dependencies ("", "formats", "dev,formats", ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
new_enough='import sys; sys.exit(sys.version_info < (3, 11))'
# A .venv a failed first run left half made (no pip: Debian's python3-venv was missing;
# or an older Python) is made again, not used as it is.
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c "$new_enough" && .venv/bin/python -m pip --version; } \
        >/dev/null 2>&1; then
    python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null || ! "$python" -c "$new_enough" 2>/dev/null; then
        found="not found"
        command -v "$python" >/dev/null && found="$("$python" --version 2>&1)"
        echo "distnode needs Python 3.11 or newer ($python: $found); run again with PYTHON=python3.11" \
             "(or newer)" >&2
        exit 1
    fi
    rm -rf .venv
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        echo "could not make .venv with $python (on Debian and Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
# An editable install compiles nothing; where PYTHONDONTWRITEBYTECODE is set,
# every daemon would compile distnode's modules again at each start.
.venv/bin/python -m compileall -q node cli
