#!/usr/bin/env bash
# The accuracy-latency frontier of docs/benchmarks.md in one command: a width sweep of OneNet (with and without
# image-wide context) and its peers on the demo data with the demo's budget, through `onenet-med compare`
# (train, evaluate on the held-out slab, profile one slice at 1 and 2 threads), into one report:
# $OUT/report.md with the frontier plot (mean Dice against latency per slice, Pareto-optimal points marked) and
# $OUT/results.json. Widths map to each network's own setting (OneNet / unet4: features; BasicUNet: its default
# widths scaled by width/32; SegResNet: init_filters; onenet_med.compare.network_overrides).
#
# 18 trainings: hours on 2 shared cores. Resumable: every finished training is reused when the same command runs
# again (--reuse); the demo width (16) runs first so that a sweep cut short still has it.
#
# Environment (all optional):
#   PYTHON=.venv/bin/python      interpreter with onenet-med installed
#   FRONTIER_OUT=reports/frontier report folder
#   FRONTIER_DATA=data/Task00_MNI152Tissue (built with `onenet-med data demo --step 1` when missing)
#   FRONTIER_NETWORKS="onenet_ed4 onenet_ed4_ctx onenet_e4 unet4 basicunet segresnet"
#                                (NAME@WIDTH entries with FRONTIER_WIDTHS= empty: these runs alone, in this order,
#                                e.g. to finish a sweep cut short or to report the finished part)
#   FRONTIER_WIDTHS="16 8 32"    widths, in the order they train
#   FRONTIER_JOBS=2              trainings side by side (one thread each on 2 cores)
#   ONENET_SMALL=1               tiny settings (coarse data, 1 epoch of 1 iteration, widths 4 8): a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
read -r -a NETWORKS <<< "${FRONTIER_NETWORKS:-onenet_ed4 onenet_ed4_ctx onenet_e4 unet4 basicunet segresnet}"
JOBS="${FRONTIER_JOBS:-2}"
if [ "${ONENET_SMALL:-0}" = "1" ]; then
    OUT="${FRONTIER_OUT:-reports/frontier_small}"
    DATA="${FRONTIER_DATA:-data/Task00_MNI152Tissue_step4}"
    STEP=4; EPOCHS=1; ITERS=1; VAL=1; BATCH=2; BN=1
    read -r -a WIDTHS <<< "${FRONTIER_WIDTHS-4 8}"
else
    # the demo's budget (bundles/onenet_demo/docs/README.md): 8 epochs x 20 iterations of 8 slices, Adam 1e-3 with
    # cosine decay, validation every 2 epochs after recomputing BatchNorm statistics on 4 batches
    OUT="${FRONTIER_OUT:-reports/frontier}"
    DATA="${FRONTIER_DATA:-data/Task00_MNI152Tissue}"
    STEP=1; EPOCHS=8; ITERS=20; VAL=2; BATCH=8; BN=4
    read -r -a WIDTHS <<< "${FRONTIER_WIDTHS-16 8 32}"
fi
DATA_CMD=(-m onenet_med data demo --out "$DATA" --step "$STEP")
if [ ! -f "$DATA/dataset.json" ]; then
    "$PY" "${DATA_CMD[@]}"
fi
WIDTH_ARGS=()
if [ "${#WIDTHS[@]}" -gt 0 ]; then
    WIDTH_ARGS=(--widths "${WIDTHS[@]}")
fi
echo "[frontier] load average at start: $(cat /proc/loadavg 2>/dev/null || echo n/a)"
# one OpenMP thread per training process: several threads per process on busy cores slow training several-fold
OMP_NUM_THREADS=1 "$PY" -m onenet_med compare \
    --bundle bundles/onenet_demo --networks "${NETWORKS[@]}" "${WIDTH_ARGS[@]}" --out "$OUT" \
    --dataset-dir "$DATA" --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" --batch-size "$BATCH" \
    --set learning_rate=0.001 --set lr_schedule=cosine --set val_interval="$VAL" --set bn_refresh_batches="$BN" \
    --set num_workers=0 --threads 1 --jobs "$JOBS" --no-predict --reuse --profile-threads 1 2 --profile-repeats 15 \
    --setup-command "python ${DATA_CMD[*]}"
echo "[frontier] load average at end: $(cat /proc/loadavg 2>/dev/null || echo n/a)"
echo "[frontier] report: $OUT/report.md"
