#!/usr/bin/env bash
# Fresh machine → a full disaster-recovery drill on generated agents, on the
# embedded default (a local repository in a scratch directory).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/vaultstore drill --agents "${DRILL_AGENTS:-2000}" "$@"
