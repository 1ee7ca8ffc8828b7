#!/usr/bin/env bash
# End to end through `cvdm predict`, as a user runs it: a 512² output, N = 4, the shipped
# residual model's default sampler (A) against the earlier default, 20 steps over the full
# log-SNR grid (B). Each run includes starting Python, importing torch and loading the model.
#
#   bash benchmarks/end_to_end.sh qpi|sr [runs]     # needs farm-bench (times A and B in turn)
#
# Inputs: one pair of the unseen test split (QPI: a phase object from a test photo of
# $PHOTOS, 512²; SR: a 256² widefield image of SR_UNSEEN_TEST, 512² output), simulated once
# into $WORK. Results are narrated in docs/benchmarks.md.
set -euo pipefail
task=${1:?usage: end_to_end.sh qpi|sr [runs]}
runs=${2:-3}
cd "$(dirname "$0")/.."
CVDM=${CVDM:-.venv/bin/cvdm}
PHOTOS=${PHOTOS:-../shared/data/natural-images}
WORK=${WORK:-runs/end_to_end}
model=models/cvdm-$task-residual.safetensors
case $task in
  qpi) source=(--source-images "$PHOTOS") ;;
  sr) source=() ;;
  *) echo "end_to_end.sh: task must be qpi or sr, not '$task'" >&2; exit 2 ;;
esac
command -v farm-bench >/dev/null || { echo "end_to_end.sh: farm-bench is not on PATH" >&2; exit 2; }
if [ ! -d "$WORK/$task/inputs" ]; then
  "$CVDM" simulate --task "$task" --split test --images 1 --size 512 --seed 0 "${source[@]}" --out "$WORK/$task"
fi
input=$(ls "$WORK/$task"/inputs/*.tif)
echo "device: cpu ($(nproc) cores, $(uname -m)); input: $input; model: $model; threads: ${OMP_NUM_THREADS:=2}"
export OMP_NUM_THREADS
farm-bench -n "$runs" --warmup 0 --timeout 1200 \
  --vs "$CVDM predict $input --model $model --n-samples 4 --device cpu --steps 20 --log-snr-max 13.3 --out $WORK/$task/old --overwrite" \
  -- "$CVDM" predict "$input" --model "$model" --n-samples 4 --device cpu --out "$WORK/$task/new" --overwrite
