#!/usr/bin/env bash
# Train the cpu models further on a GPU lease of fixed length (how compass-cpu-single, compass-cpu and
# compass-cpu-lite got their GPU steps; docs/training.md). Run from the repository root with the training crops
# packed by compass.train.pack in $DATA. Writes slim checkpoints (no optimizer state; a joint one without its
# base, which is base.pt) and the logs to $OUT; experiments/gpu_continuation/import_device_run.py puts them back into runs/.
#   BASE_MIN=4.5 JOINT_MIN=1.2 OUT=out/device bash experiments/gpu_continuation/device_train.sh
# INIT: where the base starts (default the shipped compass-cpu-single; a carried file for a second call);
# RESUME=1 continues runs/ of an earlier call on the same (still warm) machine instead.
set -u
OUT=${OUT:-out/device}
DATA=${DATA:-.gpu-data}
BASE_MIN=${BASE_MIN:-4.5}
JOINT_MIN=${JOINT_MIN:-1.2}
INIT=${INIT:-compass-cpu-single}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

slim() {  # slim SRC DST [MODULE_TO_DROP]
    python3 - "$@" <<'PY'
import sys, torch
from compass.weights import safe_load
ck = safe_load(sys.argv[1])
ck["optimizer"] = ck["aux_optimizer"] = None
for m in sys.argv[3:]:
    ck["modules"].pop(m)
torch.save(ck, sys.argv[2])
PY
}

stage() {  # stage NAME RECIPE STAGE MINUTES [ARGS...]
    local name=$1 recipe=$2 st=$3 minutes=$4
    shift 4
    echo "== $name: $(date +%T)"
    python3 -m compass train "$recipe" --stage "$st" --data "$DATA" --time-budget "$minutes" ${RESUME:+--resume} "$@" \
        > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -v $'\r' "$OUT/$name.log" | tail -5
    echo "== $name: rc $rc at $(date +%T)"
    return $rc
}

stage base cpu-gpu base "$BASE_MIN" --init "$INIT" && slim runs/cpu-gpu/base/checkpoint.pt "$OUT/base.pt"
stage joint-cpu cpu-gpu joint "$JOINT_MIN" && slim runs/cpu-gpu/joint/checkpoint.pt "$OUT/joint-cpu.pt" base
stage joint-lite cpu-lite-gpu joint "$JOINT_MIN" && slim runs/cpu-lite-gpu/joint/checkpoint.pt "$OUT/joint-lite.pt" base
tar czf "$OUT/logs.tar.gz" --exclude '*.pt' --exclude '*.tmp*' runs/cpu-gpu runs/cpu-lite-gpu
ls -la "$OUT"
