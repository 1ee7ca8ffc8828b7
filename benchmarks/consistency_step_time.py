"""Time cost of the SR data-consistency step: the same image reconstructed with it off and on, alternately.

One simulated unseen nucleus image (``--size`` output pixels), N = 8, the shipped SR model's other
defaults; ``--repeats`` alternating runs of each; prints the device, every time and the ratio of
the medians (the fair figure on a noisy machine)::

    python benchmarks/consistency_step_time.py --size 256 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data.simulate import SR_UNSEEN_TEST, simulate_sr  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    model, info = load_model(ROOT / "models/cvdm-sr-residual.safetensors", device)
    print(f"device: {device} ({platform.machine()}, {torch.get_num_threads()} threads); {args.size}², N = 8")
    sample = simulate_sr(np.random.default_rng(3), args.size, kind="nucleus", config=SR_UNSEEN_TEST)
    times: dict[float, list[float]] = {0.0: [], args.strength: []}
    for _ in range(args.repeats):
        for strength in times:
            settings = ReconstructionSettings(n_samples=8, seed=1, device=device, consistency_strength=strength)
            start = time.perf_counter()
            reconstruct(model, info, sample.widefield, settings, input_pixel_size_um=sample.camera_pixel_um,
                        wavelength_um=sample.wavelength_um, na=sample.na)
            times[strength].append(time.perf_counter() - start)
    off, on = (np.asarray(times[s]) for s in times)
    print(f"off: {np.round(off, 2).tolist()} s; ζ = {args.strength:g}: {np.round(on, 2).tolist()} s; "
          f"ratio of medians {np.median(on) / np.median(off):.2f}")


if __name__ == "__main__":
    main()
