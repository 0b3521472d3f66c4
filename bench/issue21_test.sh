#!/usr/bin/env bash
# Issue 21's judgement on one trial, run once: simulate it, score the shipped pair against the references on its
# patients, apply the pre-registered rules (bench/RESULTS_forecast.md, "Issue 21: pre-registered TEST protocol",
# amendments 1-9). Run from the repository root after `make checkpoint` (it reads build/checkpoint's TRAIN trial and
# arrays and the shipped forecast/checkpoints). TEST is seed 21021, run once; any other seed is a DEV dry run.
#
#     bash bench/issue21_test.sh OUT [SEED]        # SEED defaults to 21021 (TEST)
#
# Writes OUT/trial (the trial), OUT/count.json (bench/image_count_dev.py --checkpoint: count, twin, location, effects,
# count PIT), OUT/render.json (bench/render_dev.py --forecaster, every patient under every arm), OUT/judgement.json and
# the table on stdout. About 1.5 hours on two CPU cores.
set -euo pipefail
OUT=${1:?usage: bash bench/issue21_test.sh OUT [SEED]}
SEED=${2:-21021}
W=build/checkpoint
PY=.venv/bin/python
if [ ! -f "$W/image_train/manifest.csv" ] || [ ! -d "$W/arrays" ]; then
  echo "bench/issue21_test.sh: needs make checkpoint's $W (image_train, arrays); run make checkpoint first" >&2; exit 2
fi
if [ -e "$OUT/trial" ]; then
  echo "bench/issue21_test.sh: $OUT/trial exists; a trial is simulated and judged once" >&2; exit 2
fi
mkdir -p "$OUT"
LABEL=$([ "$SEED" = 21021 ] && echo "TEST seed 21021" || echo "DEV dry run, seed $SEED")
.venv/bin/mseval simulate "$OUT/trial" --patients-per-arm 40 --seed "$SEED" --shape 32 32 32 > "$OUT/simulate.log"
PYTHONPATH=. $PY bench/image_count_dev.py --checkpoint forecast/checkpoints/image_count --train "$W/image_train" \
  --array-cache "$W/arrays" --dev "$OUT/trial" --image-references --location-references --effects --out "$OUT/count.json" > "$OUT/count.log"
PYTHONPATH=. $PY bench/render_dev.py --dev "$OUT/trial" --checkpoint forecast/checkpoints/image_count \
  --renderer forecast/checkpoints/tiny_centre --work "$OUT/render_work" --samples 8 --arm-patients 240 --forecaster --workers 2 \
  --array-cache "$W/arrays" --out "$OUT/render.json" > "$OUT/render.log"
PYTHONPATH=. $PY bench/issue21_judgement.py "$OUT/count.json" "$OUT/render.json" --label "$LABEL" --out "$OUT/judgement.json"
