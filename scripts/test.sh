#!/usr/bin/env bash
# The README's test command: set up .venv (scripts/setup.sh: the project installed editable with
# its test extra), and headless Chromium for the gallery screenshot test (Debian's package, when
# missing and we may install it), then run pytest with any arguments given, e.g. the quick run
# `bash scripts/test.sh -m "not slow"` (the whole suite less the tests marked slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (headless browser for the gallery test) ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium: the gallery screenshot test will fail"
  else
    echo "chromium is not installed (sudo apt-get install chromium): the gallery screenshot test will fail"
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
