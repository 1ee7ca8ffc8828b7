#!/usr/bin/env bash
# Set up .venv and run the main job on the bundled default: simulate one defocus stack and
# one widefield image, reconstruct them with the shipped models (mean, variance, γ map
# as TIFF), and score the QPI reconstruction against the truth and the classical TIE solvers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pyqt6
cvdm=.venv/bin/cvdm
rm -rf out/demo  # the demo's own results from an earlier run (nothing else is written there)
for task in qpi sr; do
    $cvdm simulate --task "$task" --out "out/demo/$task" --images 1 --size 128 --seed 1
    $cvdm predict "out/demo/$task/inputs" --model "models/cvdm-$task-residual.safetensors" --out "out/demo/$task/cvdm"
done
$cvdm evaluate --model models/cvdm-qpi-residual.safetensors --input-dir out/demo/qpi/inputs \
    --target-dir out/demo/qpi/targets --out out/demo/qpi/evaluation
