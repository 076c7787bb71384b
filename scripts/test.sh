#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lint, type check and pytest
# (which starts its own mosquitto brokers on free ports). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check agent simulators tests benchmarks
echo "== mypy (strict, agent/)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
