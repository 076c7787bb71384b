#!/usr/bin/env bash
# Runs the bench agent on simulated hardware against a local TLS mosquitto, with a
# central-system double printing what the bench reports. Ctrl-C stops everything.
# State lives in .demo/ (delete it to start afresh). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m simulators.demo "$@"
