"""Tile size against quality and time: the shipped residual models with 256- and 128-px tiles.

    PYTHONPATH=src nice .venv/bin/python benchmarks/tile_size.py --save runs/tile_size.json   # ~25 min, 1 core

On the unseen test sets of ``benchmarks/nfe.py`` (``--size``² outputs), N = ``--samples``, the
model's default sampler, seed i on image i for both tile sizes (32 px overlap): MS-SSIM and PSNR
of the mean against the truth, their paired difference (128 − 256, ± standard error over
images) and the summed time of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nfe import MODELS, inputs  # noqa: E402

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402

TILES = (256, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["qpi", "sr"], choices=["qpi", "sr"])
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"device: CPU, 1 thread, torch {torch.__version__}; {args.size}² outputs, N = {args.samples}")
    results = {}
    for task in args.tasks:
        model, info = load_model(MODELS[task], "cpu")
        rows = {tile: [] for tile in TILES}
        for i, (image, target, kwargs, to_unit) in enumerate(inputs(task, args)):
            for tile in TILES:
                start = time.perf_counter()
                result = reconstruct(model, info, image, ReconstructionSettings(
                    n_samples=args.samples, tile_size=tile, device="cpu", seed=i), **kwargs)
                mean, _ = to_unit(result.mean)
                rows[tile].append({"ms_ssim": metrics.ms_ssim(mean, target, data_range=1.0),
                                   "psnr": metrics.psnr(mean, target, data_range=1.0),
                                   "seconds": time.perf_counter() - start, "tiles": result.metadata["tiles"]})
            print(task, i, {tile: rows[tile][-1] for tile in TILES}, flush=True)
        results[task] = rows
        for key in ("ms_ssim", "psnr"):
            d = np.array([b[key] - a[key] for a, b in zip(rows[256], rows[128])])
            print(f"{task} {key}: 256 {np.mean([r[key] for r in rows[256]]):.4f}, 128 "
                  f"{np.mean([r[key] for r in rows[128]]):.4f}, 128 − 256 {d.mean():+.4f} ± "
                  f"{d.std(ddof=1) / np.sqrt(len(d)):.4f}")
        print(f"{task} time 128 / 256: {sum(r['seconds'] for r in rows[128]) / sum(r['seconds'] for r in rows[256]):.2f}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({t: {str(k): v for k, v in r.items()} for t, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
