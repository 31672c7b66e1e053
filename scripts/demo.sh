#!/usr/bin/env bash
# The README's first command. On a fresh clone: create the virtual environment, install the CPU build of torch and
# the package with its `demo` extra, build the real demo dataset (MNI152 brain tissue, from files shipped in the
# nilearn wheel: no download), train onenet_ed4, the unet4 baseline and onenet_ed4_ctx (OneNet-ed with image-wide
# context, docs/networks.md) through the onenet_demo bundle with a CPU-sized budget, evaluate them on the held-out
# case, predict one volume slice by slice, and write reports/demo/ (report.md, PNG plots, predicted NIfTI).
# About 15 minutes on 2 CPU cores (onenet_ed4_ctx trains after onenet_ed4, while unet4 still trains).
#
# Environment (all optional):
#   ONENET_VENV=.venv            virtual environment to create or reuse
#   PYTHON=python3               interpreter that creates it
#   ONENET_SKIP_INSTALL=1        use $PYTHON as it is (no venv, no pip), e.g. an environment you manage
#   ONENET_DEMO_OUT=reports/demo report folder
#   ONENET_DEMO_DATA=data/Task00_MNI152Tissue
#   ONENET_SMALL=1               tiny settings (coarse data, width 4, 2 epochs of 2 iterations): a smoke test
#   ONENET_DEMO_NETWORKS="onenet_ed4 unet4 onenet_ed4_ctx"
#                                networks to compare (the first two alone: the shorter run of the README)
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
VENV="${ONENET_VENV:-.venv}"
if [ "${ONENET_SMALL:-0}" = "1" ]; then
    OUT="${ONENET_DEMO_OUT:-reports/demo_small}"
    DATA="${ONENET_DEMO_DATA:-data/Task00_MNI152Tissue_step4}"
else
    OUT="${ONENET_DEMO_OUT:-reports/demo}"
    DATA="${ONENET_DEMO_DATA:-data/Task00_MNI152Tissue}"
fi

if [ "${ONENET_SKIP_INSTALL:-0}" = "1" ]; then
    PY="${PYTHON:-python3}"
else
    if [ ! -x "$VENV/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    echo "[demo] installing into $VENV (CPU torch, onenet-med[demo])"
    "$PY" -m pip install --quiet --upgrade pip
    # CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
    "$PY" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
    "$PY" -m pip install --quiet -e ".[demo]"
fi
INSTALLED=$(date +%s)

# Budget. Training runs the two networks side by side, one process each, with cores/2 threads per process:
# several OpenMP threads per process on busy cores slow training down several-fold.
CORES=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
THREADS=$(( CORES >= 2 ? CORES / 2 : 1 ))
if [ "${ONENET_SMALL:-0}" = "1" ]; then
    STEP=4; WIDTH=4; EPOCHS=2; ITERS=2; VAL=1
else
    # width 16, native resolution (slices padded to 224x256), 8 epochs x 20 iterations of 8 slices,
    # Adam 1e-3 with cosine decay (SPEC 6a), BatchNorm statistics recomputed on 4 batches before each validation
    STEP=1; WIDTH=16; EPOCHS=8; ITERS=20; VAL=2
fi

DATA_CMD=(-m onenet_med data demo --out "$DATA" --step "$STEP")
if [ ! -f "$DATA/dataset.json" ]; then
    echo "[demo] building the demo dataset in $DATA"
    "$PY" "${DATA_CMD[@]}"
fi

# onenet_ed4 and unet4 start side by side; onenet_ed4_ctx takes onenet_ed4's slot when it is done
read -r -a NETWORKS <<< "${ONENET_DEMO_NETWORKS:-onenet_ed4 unet4 onenet_ed4_ctx}"
CHECKS=()
if [ "${ONENET_SMALL:-0}" != "1" ]; then
    CHECKS=(--check "onenet_ed4:dice_grey matter>=0.85" --check "onenet_ed4:dice_white matter>=0.85"
            --check "onenet_ed4:dice>=0.75")
fi
echo "[demo] training ${NETWORKS[*]} (width $WIDTH, $EPOCHS epochs x $ITERS iterations, $THREADS thread(s) each)"
set +e
OMP_NUM_THREADS="$THREADS" "$PY" -m onenet_med compare \
    --bundle bundles/onenet_demo --networks "${NETWORKS[@]}" --out "$OUT" --dataset-dir "$DATA" \
    --width "$WIDTH" --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" --batch-size 8 \
    --set learning_rate=0.001 --set lr_schedule=cosine --set val_interval="$VAL" --set bn_refresh_batches=4 \
    --set num_workers=0 --jobs 2 --threads "$THREADS" "${CHECKS[@]}" \
    --setup-command "python ${DATA_CMD[*]}"
RC=$?
set -e
END=$(date +%s)
echo "[demo] wall time: $(( END - START )) s (install $(( INSTALLED - START )) s, data + training + report $(( END - INSTALLED )) s)"
if [ -f "$OUT/report.md" ]; then
    echo "[demo] report: $OUT/report.md (plots and predicted NIfTI in $OUT/)"
fi
exit $RC
