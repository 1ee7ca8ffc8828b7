"""The sampler's data-consistency step (and the QPI base's variance) against plain sampling, image by image.

Each image is reconstructed as ``cvdm predict`` would (N samples, the model's sampler, 256-px tiles),
once per strength ζ of ``--strengths`` (0: off, the plain samples); the input's own optics are given
(SR: each simulated image's NA and emission wavelength). Per image and setting:

- MS-SSIM, PSNR and MAE on the [0, 1] scale (QPI: offset removed, ÷ the true phase's range; SR: affine
  fit to the target), as benchmarks/unseen.py scores them;
- the consistency RMS (input-noise std units, :mod:`napari_cvdm.consistency`) of the mean, of one sample
  and of the truth under the same optics;
- raw coverage of ±1.96 std of the samples (QPI also with the base's error variance added, as the
  variance layer has it: ``coverage_with_base``), and the lowest per image;
- seconds per image (on a machine shared with other work, a ratio of medians is the fair figure).

Sets: ``--split validation`` (SR: the training kinds under SR_TRAIN; QPI: validation photos by file),
where the variants and the default are chosen, and ``--split test`` (SR: SR_UNSEEN_TEST's six kinds with
Richardson–Lucy beside them; QPI: test photos), where the choice is scored once.

Usage::

    python benchmarks/consistent_sampling.py --task sr --split validation --images 8 --size 128 \\
        --strengths 0 0.3 1 3 10 --save eval/consistency/sr-validation.json
    python benchmarks/consistent_sampling.py --task qpi --split validation --images 8 --noise 0.05 \\
        --strengths 0 0.1 1 --qpi-step fresnel --save eval/consistency/qpi-validation.json

Prints the device and, per cell, each setting's mean [95 % interval] and the paired MS-SSIM
difference against ζ = 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qpi_data_steps  # noqa: E402
from report import cell, interval  # noqa: E402
from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.acquisition import Acquisition  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.consistency import consistency_output  # noqa: E402
from napari_cvdm.data.simulate import SR_TRAIN, SR_UNSEEN_TEST, simulate_qpi, simulate_sr, split_source_files  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, data_step, resolve_device  # noqa: E402
from napari_cvdm.predict import predict  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402

MODELS = {"sr": ROOT / "models/cvdm-sr-residual.safetensors", "qpi": ROOT / "models/cvdm-qpi-residual.safetensors"}
QPI_PIXEL_UM = 0.21


def scores(mean01, target) -> dict:
    """MS-SSIM, PSNR and MAE of one result on the [0, 1] scale."""
    return {"ms_ssim": metrics.ms_ssim(mean01, target, data_range=1.0), "psnr": metrics.psnr(mean01, target, 1.0),
            "mae": metrics.mae(mean01, target, 1.0)}


def coverage(error01, std, slope) -> float:
    """Share of pixels whose [0, 1]-scale error is within ±1.96 ``std`` (native units; ``slope``: native → [0, 1])."""
    return float(np.mean(error01 <= 1.96 * std * abs(slope)))


def run_setting(model, info, image, acquisition: Acquisition, strength: float, args):
    """The job (:func:`napari_cvdm.predict.predict`, as the CLI runs it) at ζ = ``strength``; and its seconds."""
    settings = ReconstructionSettings(n_samples=args.samples, seed=args.seed, device=args.device, tile_size=256,
                                      keep_samples=True, consistency_strength=strength)
    start = time.perf_counter()
    prediction = predict(model, info, image, acquisition, settings)
    return prediction, time.perf_counter() - start


def image_rows(model, info, image, truth, acquisition, to_unit, target, args) -> dict:
    """Every setting's row for one image."""
    rms = lambda x: consistency_output(info, x, image, acquisition).summary.get("rms")  # noqa: E731
    truth_rms, rows = rms(truth), {}
    for strength in args.strengths:
        prediction, seconds = run_setting(model, info, image, acquisition, strength, args)
        out = prediction.reconstruction
        base_variance = (out.metadata.get("base_error_variance") or [None])[0] or 0.0
        mean01, slope = to_unit(out.mean)
        error01 = np.abs(mean01 - target)
        row = scores(mean01, target)
        row.update(coverage=coverage(error01, np.sqrt(np.maximum(out.variance - base_variance, 0)), slope),
                   rms_mean=prediction.consistency.summary.get("rms"), rms_sample=rms(out.samples[0]),
                   rms_truth=truth_rms, seconds=seconds)
        if base_variance:
            row["coverage_with_base"] = coverage(error01, np.sqrt(out.variance), slope)
        if prediction.uncertainty.error is not None:  # ± error at 95 %: coverage = |error| ≤ it
            row["coverage_calibrated"] = coverage(error01, prediction.uncertainty.error / 1.96, slope)
        rows[f"ζ={strength:g}"] = row
    return rows


def sr_cells(args):
    config = SR_TRAIN if args.split == "validation" else SR_UNSEEN_TEST
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3 if args.split == "validation" else 2]))
    for kind in args.kinds or config.kinds:
        for _ in range(args.images):
            s = simulate_sr(rng, args.size, kind=kind, config=config)
            target = metrics.to_unit_range(s.target)

            def to_unit(estimate, target=target):
                return metrics.scale_to_reference(estimate, target), np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]

            acquisition = Acquisition(pixel_size_um=s.camera_pixel_um, wavelength_um=s.wavelength_um, na=s.na)
            extra = {}
            if args.split == "test":
                rl = richardson_lucy_widefield(s.widefield, s.camera_pixel_um, s.na, s.wavelength_um, iterations=10,
                                               offset=s.offset_adu)
                extra["Richardson–Lucy"] = {"ms_ssim": metrics.ms_ssim(to_unit(rl)[0], target, data_range=1.0)}
            yield kind, s.widefield, s.target, acquisition, to_unit, target, extra


def qpi_cells(args):
    files = split_source_files(args.source_images)[args.split]
    for noise in args.noise:
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 4, int(noise * 1e4), args.size]))
        for _ in range(args.images):
            s = simulate_qpi(rng, args.size, source_files=files, noise_std=noise, natural_fraction=1.0)
            target = metrics.to_unit_range(s.phase)

            def to_unit(estimate, phase=s.phase):
                return (metrics.to_unit_range(metrics.align_offset(estimate, phase), phase),
                        1.0 / float(np.ptp(phase)))

            yield f"noise {noise:g}", s.stack, s.phase, Acquisition(pixel_size_um=QPI_PIXEL_UM), to_unit, target, {}


KEYS = ("ms_ssim", "psnr", "mae", "rms_mean", "rms_sample", "rms_truth", "coverage", "coverage_with_base",
        "coverage_calibrated", "seconds")


def print_cell(name: str, rows: dict[str, list]) -> None:
    print(f"\n### {name} ({len(next(iter(rows.values())))} images)\n")
    present = [k for k in KEYS if any(k in r for rs in rows.values() for r in rs)]
    print("| setting | " + " | ".join(present) + " |")
    print("|---" * (len(present) + 1) + "|")
    for setting, rs in rows.items():
        print(f"| {setting} | " + " | ".join(cell([r.get(k) for r in rs], 3 if k != "ms_ssim" else 4)
                                          for k in present) + " |")
    off = rows.get("ζ=0")
    for setting, rs in rows.items():
        if off is None or setting == "ζ=0" or "ms_ssim" not in rs[0]:
            continue
        mean, low, high, n = interval([r["ms_ssim"] - o["ms_ssim"] for r, o in zip(rs, off)])
        slow = np.median([r["seconds"] for r in rs]) / np.median([o["seconds"] for o in off]) if "seconds" in rs[0] else np.nan
        calibrated = [r["coverage_calibrated"] for r in rs if "coverage_calibrated" in r]
        share = np.mean(np.array(calibrated) >= 0.85) if calibrated else np.nan
        print(f"- {setting} − ζ=0: MS-SSIM {mean:+.4f} [{low:+.4f}, {high:+.4f}] (n = {n}); "
              f"time × {slow:.2f} (median); images with calibrated coverage ≥ 0.85: {share:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("sr", "qpi"), required=True)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05])
    parser.add_argument("--kinds", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared/data/natural-images")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--qpi-step", choices=tuple(qpi_data_steps.STEPS), default=None,
                        help="QPI: the data-consistency step to measure (none ships)")
    args = parser.parse_args()
    if args.qpi_step:
        data_step.QPI_STEP = qpi_data_steps.STEPS[args.qpi_step]
    model, info = load_model(args.model or MODELS[args.task], str(resolve_device(args.device)))
    print(f"device: {next(model.parameters()).device} ({platform.machine()}, {torch.get_num_threads()} threads); "
          f"{args.task} {args.split}; N = {args.samples}; {args.size}²")
    results: dict[str, dict[str, list]] = {}
    cells = sr_cells(args) if args.task == "sr" else qpi_cells(args)
    for name, image, truth, acquisition, to_unit, target, extra in cells:
        rows = image_rows(model, info, image, truth, acquisition, to_unit, target, args)
        for setting, row in {**extra, **rows}.items():
            results.setdefault(name, {}).setdefault(setting, []).append(row)
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(json.dumps(results, indent=1))
    for name, rows in results.items():
        print_cell(name, rows)


if __name__ == "__main__":
    main()
