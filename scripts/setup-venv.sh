#!/usr/bin/env bash
# Creates .venv and installs this project into it, editable, with its test extras.
# The labextension and the supervisor bundle are built separately by `npm run build`
# (SKIP_JUPYTER_BUILDER), so pip does not run npm.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  say "Creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q --upgrade pip
# The build backend and its plugins (pyproject.toml's [build-system]), for --no-build-isolation.
"$VENV/bin/python" -m pip install -q 'hatchling>=1.25,<2' 'hatch-jupyter-builder>=0.9,<1' \
  'hatch-nodejs-version>=0.3.2,<0.5' editables
SKIP_JUPYTER_BUILDER=1 "$VENV/bin/python" -m pip install -q --no-build-isolation -e '.[test]'
say "Python environment ready: $VENV ($("$VENV/bin/python" --version 2>&1))."
