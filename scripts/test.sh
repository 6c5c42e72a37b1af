#!/usr/bin/env bash
# Set up a virtualenv with the test extras, then run the fast test suite.
# The S3 tests start their own S3-compatible server process (moto) on
# 127.0.0.1; the balance-source tests start JSON-RPC servers the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
