#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lint, type check and pytest
# (which starts its own mosquitto brokers on free ports). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check agent simulators tests benchmarks scripts
echo "== mypy (strict, agent/)"
.venv/bin/mypy
echo "== pytest"
# Three workers, one test file each at a time (pytest-xdist): most tests wait on a broker,
# a simulator or an agent subprocess, so three fit two cores. BENCH_TEST_WORKERS=0 runs
# everything in this process (for a debugger).
exec .venv/bin/python -m pytest -n "${BENCH_TEST_WORKERS:-3}" --dist loadfile "$@"
