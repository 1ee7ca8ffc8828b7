"""A narrowed log-SNR grid at few NFE against the 20-NFE default, on unseen 512² outputs, end to end.

    .venv/bin/python benchmarks/few_steps.py --images 2     # ~6 min on 2 idle cores

For each task and each unseen test image (``benchmarks/nfe.py``'s sets: QPI test photos at
``--noise``, SR ``SR_UNSEEN_TEST``), in one process and alternating: load the shipped model and
reconstruct a ``--size``² output with N = ``--samples`` (seed i on image i, default tiles) at
(a) 20 NFE on the full ``log_snr`` grid and (b) ``--steps`` NFE with ``log_snr_range = (None,
--high)``. Prints the wall time of each (model loading included), their ratio, and the paired
difference of the mean's PSNR / MS-SSIM against the truth, (b) − (a).
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

import nfe  # noqa: E402

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.model.samplers import LOG_SNR_MAX  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402


def timed_run(task: str, image, kwargs, seed: int, steps: int, log_snr_range, samples: int):
    start = time.perf_counter()
    model, info = load_model(nfe.MODELS[task], "cpu")
    info.sampler = {**info.sampler, "log_snr_range": log_snr_range}
    result = reconstruct(model, info, image, ReconstructionSettings(n_samples=samples, steps=steps, seed=seed,
                                                                     device="cpu"), **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["qpi", "sr"], choices=["qpi", "sr"])
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="output side (px)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05], help="QPI noise std, in turn")
    parser.add_argument("--samples", type=int, default=4, help="N")
    parser.add_argument("--steps", type=int, default=8, help="NFE of the narrowed grid")
    parser.add_argument("--high", type=float, default=8.0, help="ℓ_high of the narrowed grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device: CPU {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"{args.size}² output, N = {args.samples}")
    for task in args.tasks:
        images = nfe.inputs(task, args)
        rows = []
        for i, (image, target, kwargs, to_unit) in enumerate(images):
            full, full_s = timed_run(task, image, kwargs, i, 20, (None, LOG_SNR_MAX), args.samples)
            few, few_s = timed_run(task, image, kwargs, i, args.steps, (None, args.high), args.samples)
            a, b = nfe.score(full, target, to_unit), nfe.score(few, target, to_unit)
            rows.append((full_s, few_s, b["psnr"] - a["psnr"], b["ms_ssim"] - a["ms_ssim"], a, b))
            print(f"{task} image {i}: 20 NFE {full_s:.1f} s (PSNR {a['psnr']:.2f}, MS-SSIM {a['ms_ssim']:.4f}); "
                  f"{args.steps} NFE to ℓ {args.high:g}: {few_s:.1f} s (PSNR {b['psnr']:.2f}, "
                  f"MS-SSIM {b['ms_ssim']:.4f}); time ratio {full_s / few_s:.2f}", flush=True)
        d = np.array([r[2:4] for r in rows])
        se = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros(2)
        print(f"{task}: ΔPSNR {d[:, 0].mean():+.3f} ± {se[0]:.3f} dB, ΔMS-SSIM {d[:, 1].mean():+.4f} ± {se[1]:.4f}; "
              f"time {np.mean([r[1] for r in rows]):.1f} s vs {np.mean([r[0] for r in rows]):.1f} s")


if __name__ == "__main__":
    main()
