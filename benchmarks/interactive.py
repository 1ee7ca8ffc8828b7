"""Interactive speed on this machine: the preview, the cost of a network call per tile, a 512² run.

    PYTHONPATH=src nice .venv/bin/python benchmarks/interactive.py --tile-costs   # ~10 min on 2 loaded cores

For each shipped residual model, on a seeded input with a ``--size``² output:

- the preview the Reconstruct widget shows first (QPI: the TIE base b(y) of ``reconstruct_base``;
  SR: the upsampled widefield image, then its predictor base b(y)), best of 3;
- with ``--end-to-end``: the wall time of loading the model file and ``reconstruct()`` with
  N = ``--samples`` at ``--steps`` NFE (default: the model's), no compile;
- with ``--tile-costs`` (QPI model): one network call per tile side and batch (best of 2), the
  cost per pixel that decides the default tile size.

Prints the device and threads with every figure.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_runtime import input_image  # noqa: E402

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.physics import upsample  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, reconstruct_base  # noqa: E402

MODELS = {"qpi": ROOT / "models" / "cvdm-qpi-residual.safetensors",
          "sr": ROOT / "models" / "cvdm-sr-residual.safetensors"}


def best_of(count: int, function) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def previews(task: str, image: np.ndarray) -> None:
    model, info = load_model(MODELS[task], "cpu")
    base = best_of(3, lambda: reconstruct_base(model, info, image, device="cpu"))
    if task == "qpi":
        print(f"{task}: preview = TIE base b(y): {base:.3f} s", flush=True)
        return
    classical = best_of(3, lambda: upsample(image.astype(np.float32)[None], int(info.upsampling_factor)))
    print(f"{task}: preview = upsampled input: {classical:.4f} s; then predictor base b(y): {base:.2f} s", flush=True)


def end_to_end(task: str, image: np.ndarray, args) -> None:
    start = time.perf_counter()
    model, info = load_model(MODELS[task], "cpu")
    result = reconstruct(model, info, image, ReconstructionSettings(n_samples=args.samples, steps=args.steps,
                                                                    device="cpu"))
    meta = result.metadata
    print(f"{task}: load + reconstruct {time.perf_counter() - start:.1f} s ({meta['tiles']} tiles, "
          f"{meta['steps']} NFE, {meta['sampler']}, N = {args.samples})", flush=True)


def tile_costs(path: Path) -> None:
    model, _ = load_model(path, "cpu")
    print("\n| tile side | batch | s per call | µs per pixel |\n|---|---|---|---|")
    for side, batch in ((128, 1), (128, 4), (256, 1), (256, 4), (512, 1), (512, 4)):
        x, gamma = torch.randn(batch, 1, side, side), torch.rand(batch, 1, side, side)
        condition = torch.randn(batch, model.config.condition_channels, side, side)
        with torch.no_grad():
            seconds = best_of(2, lambda: model.predict_noise(x, condition, gamma))
        print(f"| {side} | {batch} | {seconds:.2f} | {seconds / side**2 / batch * 1e6:.1f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="output side (pixels)")
    parser.add_argument("--samples", type=int, default=4, help="N")
    parser.add_argument("--steps", type=int, default=None, help="NFE (default: the model file's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tile-costs", action="store_true", help="time one network call per tile side")
    parser.add_argument("--end-to-end", action="store_true", help="time load + reconstruct()")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device: CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"torch {torch.__version__}; {args.size}² output")
    if args.tile_costs:
        tile_costs(MODELS["qpi"])
    for task in args.tasks:
        image = input_image(task, args.size, 1 if task == "qpi" else 2)
        previews(task, image)
        if args.end_to_end:
            end_to_end(task, image, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
