"""Evenly spread tiles against stop 16's layout: quality and time on unseen 512² outputs.

    PYTHONPATH=src nice .venv/bin/python benchmarks/tile_layout.py --images 2   # ~20 min, 1 core

On the unseen test sets of ``benchmarks/nfe.py`` (``--size``² outputs), N = ``--samples``, the
model's default sampler, seed i on image i for both layouts: today's :func:`tile_spans` at its
default (at most 320 px, spread evenly) and stop 16's (256-px tiles stepping by 224 px, the last
one flush with the border). MS-SSIM and PSNR of the mean against the truth, the paired
difference (today − stop 16) and the time ratio, each image in one process, one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nfe import MODELS, inputs  # noqa: E402

from napari_cvdm import engine, metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402


def stop16_spans(length: int, tile: int | None, overlap: int, align: int) -> list[tuple[int, int]]:
    """Stop 16's layout: fixed-size tiles every ``tile − overlap`` px, the last one flush with the end."""
    if tile is None or length <= tile:
        return [(0, length)]
    tile = -(-tile // align) * align
    step = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, step))
    last = (length - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    return [(s, s + tile) for s in starts[:-1]] + [(starts[-1], length)]


LAYOUTS = {"today": (None, ReconstructionSettings.tile_size), "stop 16": (stop16_spans, 256)}


def run(model, info, image, kwargs, seed: int, samples: int, layout: str):
    spans, tile = LAYOUTS[layout]
    patch = mock.patch.object(engine, "tile_spans", spans) if spans else contextlib.nullcontext()
    with patch:
        start = time.perf_counter()
        result = reconstruct(model, info, image, ReconstructionSettings(n_samples=samples, tile_size=tile,
                                                                        device="cpu", seed=seed), **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["qpi", "sr"], choices=["qpi", "sr"])
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"device: CPU, 1 thread, torch {torch.__version__}; {args.size}² outputs, N = {args.samples}")
    for task in args.tasks:
        model, info = load_model(MODELS[task], "cpu")
        rows = {layout: [] for layout in LAYOUTS}
        for i, (image, target, kwargs, to_unit) in enumerate(inputs(task, args)):
            for layout in LAYOUTS:
                result, seconds = run(model, info, image, kwargs, i, args.samples, layout)
                mean, _ = to_unit(result.mean)
                rows[layout].append({"ms_ssim": metrics.ms_ssim(mean, target, data_range=1.0),
                                     "psnr": metrics.psnr(mean, target, data_range=1.0),
                                     "seconds": seconds, "tiles": result.metadata["tiles"]})
            print(task, i, rows["today"][-1], rows["stop 16"][-1], flush=True)
        for key in ("ms_ssim", "psnr"):
            d = np.array([a[key] - b[key] for a, b in zip(rows["today"], rows["stop 16"])])
            spread = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(f"{task} {key}: today {np.mean([r[key] for r in rows['today']]):.4f}, stop 16 "
                  f"{np.mean([r[key] for r in rows['stop 16']]):.4f}, today − stop 16 {d.mean():+.4f} ± {spread:.4f}")
        ratios = [b["seconds"] / a["seconds"] for a, b in zip(rows["today"], rows["stop 16"])]
        print(f"{task} time stop 16 / today per image: {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)


if __name__ == "__main__":
    main()
