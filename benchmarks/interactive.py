"""Interactive speed on this machine: a 512² reconstruction end to end, and the preview.

    PYTHONPATH=src nice .venv/bin/python benchmarks/interactive.py        # ~15 min on 2 loaded cores

For each shipped residual model, in ONE process, alternating A B A B … on the same seeded
input with a ``--size``² output, N = ``--samples``: wall time of loading the model file and
``reconstruct()`` (no compile), for

- A, the settings of stop 13 (the model file's 20 NFE, all N samples in one network call), and
- B, today's defaults (4 samples per call for a 256² tile, the model's default NFE or ``--steps``);

and the time of the preview the Reconstruct widget shows first (QPI: the TIE base b(y) of
``reconstruct_base``; SR: the upsampled widefield image, before its predictor base). Prints
the device, the threads, each pair's times and their ratio. ``--tile-costs`` first times one
network call of the QPI model per tile side and batch (best of 2): the cost per pixel that
decides the default tile size.
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
from napari_cvdm.reconstruct import ReconstructionSettings, reconstruct, reconstruct_base  # noqa: E402

MODELS = {"qpi": ROOT / "models" / "cvdm-qpi-residual.safetensors",
          "sr": ROOT / "models" / "cvdm-sr-residual.safetensors"}


def end_to_end(path: Path, image: np.ndarray, settings: ReconstructionSettings) -> tuple[float, dict]:
    start = time.perf_counter()
    model, info = load_model(path, "cpu")
    result = reconstruct(model, info, image, settings)
    return time.perf_counter() - start, result.metadata


def preview_seconds(path: Path, image: np.ndarray) -> float:
    model, info = load_model(path, "cpu")
    start = time.perf_counter()
    if info.task == "qpi":
        reconstruct_base(model, info, image, device="cpu")
    else:
        upsample(image.astype(np.float32)[None], int(info.upsampling_factor))
    return time.perf_counter() - start


def tile_costs(path: Path) -> None:
    model, _ = load_model(path, "cpu")
    print("\n| tile side | batch | s per call | µs per pixel |\n|---|---|---|---|")
    for side, batch in ((128, 1), (128, 4), (256, 1), (256, 4), (512, 1), (512, 4)):
        x, gamma = torch.randn(batch, 1, side, side), torch.rand(batch, 1, side, side)
        condition = torch.randn(batch, model.config.condition_channels, side, side)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            with torch.no_grad():
                model.predict_noise(x, condition, gamma)
            times.append(time.perf_counter() - start)
        print(f"| {side} | {batch} | {min(times):.2f} | {min(times) / side**2 / batch * 1e6:.1f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="output side (pixels)")
    parser.add_argument("--samples", type=int, default=4, help="N")
    parser.add_argument("--steps", type=int, default=None, help="NFE of B (default: the model file's)")
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tile-costs", action="store_true", help="time one network call per tile side first")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device: CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"{args.size}² output, N = {args.samples}")
    if args.tile_costs:
        tile_costs(MODELS["qpi"])
    for task in args.tasks:
        _, info = load_model(MODELS[task], "cpu")
        image = input_image(task, args.size, int(info.upsampling_factor))
        a = ReconstructionSettings(n_samples=args.samples, steps=20, max_batch=args.samples, device="cpu")
        b = ReconstructionSettings(n_samples=args.samples, steps=args.steps, device="cpu")
        previews = [preview_seconds(MODELS[task], image) for _ in range(3)]
        print(f"{task}: preview {min(previews):.3f} s (best of 3)", flush=True)
        for _ in range(args.repeats):
            seconds_a, meta_a = end_to_end(MODELS[task], image, a)
            seconds_b, meta_b = end_to_end(MODELS[task], image, b)
            print(f"{task}: A {seconds_a:.1f} s ({meta_a['tiles']} tiles, {meta_a['steps']} NFE, {meta_a['sampler']}), "
                  f"B {seconds_b:.1f} s ({meta_b['tiles']} tiles, {meta_b['steps']} NFE, {meta_b['sampler']}), "
                  f"A/B {seconds_a / seconds_b:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
