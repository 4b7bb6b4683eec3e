#!/usr/bin/env bash
# The README's first command: set up .venv, then run the whole job offline (`python -m builder demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m builder demo "$@"
