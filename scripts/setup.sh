#!/usr/bin/env bash
# Create .venv (if missing) and install compass with the extras its tests need (test, serve). torch is pinned to
# 2.13.0 (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,serve]"
