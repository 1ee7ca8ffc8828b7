"""CPU runtime options side by side: threads, channels_last and torch.compile for ``reconstruct()``.

    PYTHONPATH=src nice .venv/bin/python benchmarks/cpu_runtime.py            # ~10 min on 2 loaded cores
    PYTHONPATH=src .venv/bin/python benchmarks/cpu_runtime.py --quick         # the code path only

In ONE process, on the same input, for each shipped model (``models/cvdm-qpi-small``: a
``--size``² defocus stack; ``models/cvdm-sr-small``: a (``--size``/2)² widefield image →
``--size``² output): wall time of ``reconstruct()`` (N = ``--samples``, ``--steps`` steps of the
model's sampler, fp32, the default 256-px tiles) for each option pair A → B

- ``torch.set_num_threads`` 1 → 2,
- ``channels_last`` off → on (``--threads``, default 1),
- ``compile`` off → on (``--threads``; the first compiled call, compile included, is timed
  apart and not counted; a failed compile falls back to eager, which is reported),

run ``--repeats`` times alternating A B A B …, so that drift in the machine's load hits both.
Reported per pair: speed-up t_A / t_B (> 1: B is faster), its min and median, and the
largest difference of the two means (the options leave the result unchanged up to rounding).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402

MODELS = {"qpi": ROOT / "models" / "cvdm-qpi-small.safetensors", "sr": ROOT / "models" / "cvdm-sr-small.safetensors"}


def option_pairs(threads: int) -> list[tuple[str, dict, dict]]:
    """(label, option A, option B); options: ``threads`` and ReconstructionSettings fields."""
    return [
        ("threads 1 → 2", {"threads": 1}, {"threads": 2}),
        (f"channels_last off → on ({threads} thread(s))", {"threads": threads},
         {"threads": threads, "channels_last": True}),
        (f"compile off → on ({threads} thread(s))", {"threads": threads}, {"threads": threads, "compile": True}),
    ]


def input_image(task: str, size: int, factor: int) -> np.ndarray:
    """A seeded input giving a ``size``² output: a defocus pair (QPI) or a widefield image (SR)."""
    rng = np.random.default_rng(0)
    side = size // factor
    yy, xx = np.mgrid[:side, :side]
    base = 1.0 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    if task == "qpi":
        return np.stack([base, base[::-1]]).astype(np.float32) + 0.05 * rng.standard_normal((2, side, side),
                                                                                             dtype=np.float32)
    return rng.poisson(100 * base).astype(np.float32)


def timed_run(model, info, image, options: dict, args) -> tuple[float, np.ndarray, str | None]:
    """(seconds, mean, the compile-failure warning if any) of one reconstruct() with ``options``."""
    torch.set_num_threads(options["threads"])
    fields = {k: v for k, v in options.items() if k != "threads"}
    settings = ReconstructionSettings(n_samples=args.samples, steps=args.steps, device="cpu", seed=0,
                                      precision="fp32", **fields)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = reconstruct(model, info, image, settings)
        seconds = time.perf_counter() - start
    failures = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    return seconds, result.mean, failures[0] if failures else None


def compare(model, info, image, label: str, option_a: dict, option_b: dict, args) -> None:
    """Print one table row: A and B alternated ``--repeats`` times, speed-ups per pair."""
    note = ""
    if option_b.get("compile"):
        first, _, fell_back = timed_run(model, info, image, option_b, args)
        note = f"; first compiled call {first:.1f} s (not counted)" + (
            f"; fell back to eager: {fell_back[:160]}" if fell_back else "")
    speedups, differences = [], []
    for _ in range(args.repeats):
        seconds_a, mean_a, _ = timed_run(model, info, image, option_a, args)
        seconds_b, mean_b, _ = timed_run(model, info, image, option_b, args)
        speedups.append(seconds_a / seconds_b)
        differences.append(float(np.abs(mean_a - mean_b).max()))
        print(f"    {label}: A {seconds_a:.2f} s, B {seconds_b:.2f} s", flush=True)
    pairs = ", ".join(f"{s:.2f}" for s in speedups)
    print(f"| {info.task} | {label} | {pairs} | {min(speedups):.2f} | {float(np.median(speedups)):.2f} | "
          f"{max(differences):.1e}{note} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="output side (pixels)")
    parser.add_argument("--samples", type=int, default=2, help="N")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps (NFE per sample)")
    parser.add_argument("--repeats", type=int, default=3, help="A B pairs per option")
    parser.add_argument("--threads", type=int, default=1, help="threads for the channels_last and compile pairs")
    parser.add_argument("--tasks", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="32² output, 2 steps, 1 pair: checks the code path")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.repeats = 32, 2, 1
    print(f"device: CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) by default; "
          f"torch {torch.__version__}; {args.size}² output, N = {args.samples}, {args.steps} steps, fp32, "
          f"{args.repeats} alternating A/B pairs")
    print("\n| model | A → B | speed-up t_A / t_B per pair | min | median | max abs Δ mean |\n|---|---|---|---|---|---|")
    for task in args.tasks:
        model, info = load_model(MODELS[task], "cpu")
        image = input_image(task, args.size, int(info.upsampling_factor))
        for label, option_a, option_b in option_pairs(args.threads):
            compare(model, info, image, label, option_a, option_b, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
