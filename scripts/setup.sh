#!/usr/bin/env bash
# Create .venv at the repository root and install napari-cvdm into it (editable).
# Usage: scripts/setup.sh [EXTRAS]   (default extras: pyqt6 = napari + PyQt6)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-pyqt6}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Install torch on its own first, pinned: unpinned, pip picks the newest build (CUDA, several GB).
# On a GPU machine this pin gives the CUDA build; set TORCH_SPEC to choose another.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
