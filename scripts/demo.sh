#!/usr/bin/env bash
# Set up .venv and run the main job on the bundled default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pyqt6
.venv/bin/cvdm demo --out out/demo
