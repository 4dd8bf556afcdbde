#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite: the model-free tier first (under a
# minute: a broken core fails fast), then the rest. Arguments go to one pytest run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
fi
.venv/bin/python -m pytest -q -ra -m "not model and not interpreter and not slow"
exec .venv/bin/python -m pytest -q -ra --durations=30 -m "(model or interpreter) and not slow"
