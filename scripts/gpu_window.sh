#!/usr/bin/env bash
# One GPU training window (docs/training.md, "GPU windows"), run on the GPU machine from the repository root,
# with the window's crop pack in .gpu-data (compass.train.pack --window K) and constriction's wheel in .whl:
#   MINUTES=8 OUT=$OUT bash scripts/gpu_window.sh
# It probes the throughput variants, trains RECIPE's STAGE from checkpoints/RECIPE/STAGE.pt (or from scratch)
# until MINUTES are spent, and leaves in OUT what `python -m compass.train.window import OUT` takes back here.
# SET="stages.base.batch=2 stages.base.crop=64" overrides recipe settings (a CPU dry run); RUN_DIR moves the
# training run's folder (default runs/RECIPE/STAGE-window).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/window}
MINUTES=${MINUTES:-8}
RECIPE=${RECIPE:-paper-gpu}
STAGE=${STAGE:-base}
DATA=${DATA:-.gpu-data}
VARIANTS=${VARIANTS:-eager,compiled}
PROBE_SECONDS=${PROBE_SECONDS:-8}
mkdir -p "$OUT"
if ! python3 -c "import constriction" 2>/dev/null; then  # the GPU image lacks it; the wheel travels in .whl
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
sets=()
for s in ${SET:-}; do sets+=(--set "$s"); done
python3 -m compass.train.window run "$RECIPE" --stage "$STAGE" --minutes "$MINUTES" --data "$DATA" --out "$OUT" \
    --variants "$VARIANTS" --probe-seconds "$PROBE_SECONDS" ${RUN_DIR:+--run-dir "$RUN_DIR"} "${sets[@]}" 2>&1 | tee "$OUT/console.log"
ls -la "$OUT"
