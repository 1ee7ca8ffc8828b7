#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (napari tests under Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "pyqt6,test"
if ! command -v xvfb-run >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        apt-get install -y -qq xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
            libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
            libxcb-shape0 libdbus-1-3 libfontconfig1 >/dev/null
    else
        echo "xvfb-run is missing: install Debian's xvfb (see docs/troubleshooting.md) and run again" >&2
        exit 1
    fi
fi
xvfb-run -a .venv/bin/python -m pytest -q "$@"
