"""Do two checkouts give the same outputs? Seeded ``cvdm predict`` of every shipped model on fixed inputs.

Run ``predict`` once with each checkout's package (``PYTHONPATH=OTHER/src``), then ``compare``::

    git worktree add /tmp/previous HEAD~1
    PYTHONPATH=/tmp/previous/src python benchmarks/same_outputs.py predict --out /tmp/outputs-previous
    python benchmarks/same_outputs.py predict --out /tmp/outputs-now
    python benchmarks/same_outputs.py compare /tmp/outputs-previous /tmp/outputs-now

``compare`` prints, per model and output, max|a − b| / max|b| and whether it is within
``--tolerance`` (default 1e-6); it exits 1 when any shared output differs by more, or when a
file exists on one side only. The inputs are simulated test-split pairs (seeded), 96² for QPI
stacks and 48² widefield images for SR, run on the CPU with N = 3, 4 steps and seed 7.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

MODELS = Path(__file__).resolve().parents[1] / "models"
TASKS = {"qpi": 96, "sr": 96}
PREDICT = ["--n-samples", "3", "--steps", "4", "--seed", "7", "--device", "cpu"]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "import sys; from napari_cvdm.cli import main; sys.exit(main())",
                    *args], check=True)


def predict(out: Path) -> None:
    """Simulate the inputs (once per folder) and predict them with every shipped model."""
    print(f"device: cpu ({platform.processor() or platform.machine()}), the CLI's --device cpu")
    for task, size in TASKS.items():
        data = out / f"data-{task}"
        if not data.exists():
            _cli("simulate", "--task", task, "--out", str(data), "--images", "1", "--size", str(size),
                 "--split", "test", "--seed", "3")
        for model in sorted(MODELS.glob(f"cvdm-{task}-*.safetensors")):
            _cli("predict", str(data / "inputs"), "--model", str(model), "--out", str(out / model.stem),
                 "--overwrite", *PREDICT)


def compare(before: Path, after: Path, tolerance: float) -> int:
    """Print each output's relative difference; 1 when one is over ``tolerance`` or missing."""
    worst = 0
    names = sorted({p.relative_to(before) for p in before.glob("cvdm-*/*.tif")}
                   | {p.relative_to(after) for p in after.glob("cvdm-*/*.tif")})
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            print(f"{name}: only in {before if (before / name).exists() else after}")
            worst = 1
            continue
        a, b = tifffile.imread(before / name).astype(np.float64), tifffile.imread(after / name).astype(np.float64)
        if a.shape != b.shape:
            print(f"{name}: shapes differ {a.shape} vs {b.shape}")
            worst = 1
            continue
        relative = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
        same = "bitwise" if np.array_equal(a, b) else ("within" if relative <= tolerance else "DIFFERS")
        worst = max(worst, int(same == "DIFFERS"))
        print(f"{str(name):60s} max|a-b|/max|a| = {relative:.2e}  {same}")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("predict")
    run.add_argument("--out", type=Path, required=True)
    check = commands.add_parser("compare")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    check.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    if args.command == "predict":
        predict(args.out)
        return 0
    return compare(args.before, args.after, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
