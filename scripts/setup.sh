#!/usr/bin/env bash
# Create .venv (if needed) and install the project into it, editable, with its test extra
# (`pip install -e .[test]`: runtime dependencies from requirements.txt, test ones from
# requirements-test.txt, the `mosaic-library` console script).  Idempotent and quiet: it
# installs again only when pyproject.toml or a requirements file changed since the last time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.install.sha256
want=$(cat pyproject.toml requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
fi
