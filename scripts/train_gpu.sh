#!/usr/bin/env bash
# Train both shipped model kinds (residual formulation) at the paper's network size on one GPU.
# Usage: bash scripts/train_gpu.sh [OUT_DIR]    (default: runs/gpu)
# Expected time: unmeasured; the work is
# STEPS × batch 16 of 128² patches per model; tune with the environment variables below.
# The QPI phase objects come from SOURCE_IMAGES' training split when it is set (split by file).
# Settings (environment): PRESET (paper), STEPS (20000), BATCH (16), PATCH (128), DEVICE (cuda),
# IMAGES (512 simulated pairs), SIZE (256 px), CVDM (the cvdm command), SOURCE_IMAGES (unset).
# A stopped run continues where it stopped: run the same command again (it resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
cvdm=${CVDM:-.venv/bin/cvdm}
common=(--preset "${PRESET:-paper}" --steps "${STEPS:-20000}" --batch-size "${BATCH:-16}"
        --patch-size "${PATCH:-128}" --device "${DEVICE:-cuda}" --simulated-images "${IMAGES:-512}"
        --simulated-size "${SIZE:-256}" --formulation residual --checkpoint-every 500 --validate-every 1000)
for task in qpi sr; do
    extra=()
    # QPI as shipped: the TIE base corrected by a jointly trained direct predictor that reads the noise level
    if [ "$task" = qpi ]; then extra=(--base-correction); fi
    if [ "$task" = qpi ] && [ -n "${SOURCE_IMAGES:-}" ]; then extra+=(--source-images "$SOURCE_IMAGES"); fi
    resume=()
    if [ -f "$out/cvdm-$task-gpu.run/last.pt" ]; then resume=(--resume); fi
    "$cvdm" train --task "$task" "${common[@]}" "${extra[@]}" "${resume[@]}" --output "$out/cvdm-$task-gpu.safetensors"
done
