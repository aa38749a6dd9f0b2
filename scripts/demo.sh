#!/usr/bin/env bash
# Quick start: set up, then encode the bundled photo into one 3-layer file and decode every layer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/compass encode examples/kingfisher.png out/kingfisher.cmp --layers 0.25,0.5,1 --quality 0.5
.venv/bin/compass decode out/kingfisher.cmp -o out/kingfisher.png --all
