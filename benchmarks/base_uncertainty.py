"""How well the closed-form error variance of the QPI TIE base predicts its real error.

1. Fits a :class:`~napari_cvdm.physics.phase_prior.PhasePrior` to ``--prior-images`` training
   phases drawn as the shipped models' default simulator draws them (``simulate_qpi`` with its
   default sources: half bundled scikit-image photos, half procedural textures; or, with
   ``--prior-photos``, half crops of the *training* split of ``--source-images`` as the model
   card records) and prints it as JSON; the simulation is periodic, so the periodogram is
   taken without a window (the windowed fit is printed beside it).
2. On ``--images`` pairs from the *validation* split (by file) of ``--source-images`` at each
   ``--noise``: the model's TIE base (``TIEBase.phase``, its own solver, boundary and
   noise-adaptive ``a``) against the true phase, offset removed. Per image: the measured
   per-pixel error variance and, beside it, the base's error on the same object without noise;
   the predicted ones (σ̂ from ``defocus_relative_noise_std``): the one-solve Tikhonov filter
   error (``fft_tie`` with the same ``a``), the same with US-TIE's iterations and gain
   (linearised), the Wiener posterior, and an oracle (the linearised filter with the object's own
   periodogram and the true σ: what is left is the linearisation); the coverage of
   ``|error| ≤ 1.96·√predicted``; and the share of the error variance (measured, predicted) at
   wavelengths longer than ``--long-px`` px, which a network on patches of that size cannot see.

    PYTHONPATH=src .venv/bin/python benchmarks/base_uncertainty.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.checkpoint import load_model, read_model_info, save_model  # noqa: E402
from napari_cvdm.data.simulate import phase_object_stack, simulate_qpi, split_source_files  # noqa: E402
from napari_cvdm.physics.noise import defocus_relative_noise_std  # noqa: E402
from napari_cvdm.physics.optics import frequency_grid  # noqa: E402
from napari_cvdm.physics.phase_prior import (  # noqa: E402
    fit_phase_prior, periodogram, pixel_variance, tie_filter_error_spectrum, tie_posterior_spectrum,
)
from napari_cvdm.physics.tie import noise_adaptive_regularization, us_tie  # noqa: E402
from napari_cvdm.residual.tie_base import SOLVERS, TIEBase  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fit_prior(args, pixel_um):
    """The priors (unwindowed, windowed) of ``--prior-images`` simulated training phases."""
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 0]))
    files = split_source_files(args.prior_photos)["train"] if args.prior_photos else None
    phases = [simulate_qpi(rng, args.size, source_files=files).phase for _ in range(args.prior_images)]
    return fit_phase_prior(phases, pixel_um, window=False), fit_phase_prior(phases, pixel_um, window=True)


def write_prior(args, base: TIEBase) -> None:
    """Store ``base.with_prior`` of the training phases in the model file (metadata only)."""
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 0]))
    files = split_source_files(args.prior_photos)["train"] if args.prior_photos else None
    phases = [simulate_qpi(rng, args.size, source_files=files).phase for _ in range(args.prior_images)]
    model, info = load_model(args.model, "cpu")
    info = replace(info, base=base.with_prior(phases).to_dict())
    save_model(args.model, model, info)
    print(f"prior written to {args.model}: {json.dumps(info.base['prior'])}")


def long_share(spectrum: np.ndarray, pixel_um: float, long_px: float) -> float:
    """Share of a PSD's variance (DC left out) at wavelengths longer than ``long_px`` pixels."""
    fy, fx = frequency_grid(spectrum.shape, pixel_um)
    low = np.sqrt(fy**2 + fx**2) < 1.0 / (long_px * pixel_um)
    low[0, 0] = False
    return float(spectrum[low].sum() / (spectrum.sum() - spectrum[0, 0]))


def base_filter(stack, base: TIEBase, sigma: float) -> tuple[float, int, float]:
    """The base's Tikhonov ``a`` (µm⁻⁴) on this stack, and the iterations and gain of its linearised
    filter (:func:`~napari_cvdm.physics.phase_prior.tie_transfer`): US-TIE's own, or 1 and 1 for FFT-TIE."""
    a = noise_adaptive_regularization(stack, base.strength, base.exponent, sigma)
    if base.kind != "us_tie":
        return a, 1, 1.0
    _, info = us_tie(stack, base.dz_um, base.wavelength_um, base.pixel_um, a, boundary=base.boundary,
                     return_info=True)
    return a, max(info.iterations, 1), float(stack.mean() / stack.mean(axis=0).max())


def image_row(sample, base: TIEBase, prior, long_px: float) -> dict:
    """One pair's measured and predicted error variances (rad²), coverages and long-wavelength shares.

    Predictions with the prior and σ̂: ``filter`` (one Tikhonov solve), ``us_tie`` (its iterations),
    ``posterior`` (Wiener); ``oracle``: the base's linearised filter with the object's own
    periodogram and the true σ. ``noise_free``: the base's error on the same object without noise."""
    stack, phase = sample.stack.astype(np.float64), sample.phase.astype(np.float64)
    sigma = defocus_relative_noise_std(stack)
    error = base.phase(stack).astype(np.float64) - phase
    error -= error.mean()
    a, iterations, gain = base_filter(stack, base, sigma)
    optics = (phase.shape, base.pixel_um, base.dz_um, base.wavelength_um)
    own = periodogram(phase, base.pixel_um, window=False)
    spectra = {"filter": tie_filter_error_spectrum(*optics, sigma, prior, a),
               "us_tie": tie_filter_error_spectrum(*optics, sigma, prior, a, iterations, gain),
               "posterior": tie_posterior_spectrum(*optics, sigma, prior),
               "oracle": tie_filter_error_spectrum(*optics, sample.noise_std, own, a, iterations, gain)}
    clean = phase_object_stack(phase, base.dz_um, base.wavelength_um, base.pixel_um)
    solve = SOLVERS[base.kind]
    clean_error = solve(clean, base.dz_um, base.wavelength_um, base.pixel_um, a, base.boundary) - phase
    row = {"sigma_hat": sigma, "a": a, "iterations": iterations if base.kind == "us_tie" else 0,
           "measured": float(np.mean(error**2)), "noise_free": float(np.var(clean_error)),
           "phase_vs_prior": float(np.var(phase) / prior.pixel_variance(phase.shape, base.pixel_um)),
           "long_measured": long_share(periodogram(error, base.pixel_um, False), base.pixel_um, long_px)}
    for name, spectrum in spectra.items():
        row[name] = pixel_variance(spectrum, base.pixel_um)
        row[f"cover_{name}"] = float(np.mean(np.abs(error) <= 1.96 * np.sqrt(row[name])))
        row[f"long_{name}"] = long_share(spectrum, base.pixel_um, long_px)
    return row


NAMES = ("filter", "us_tie", "posterior", "oracle")


def print_row(name: str, row: dict) -> None:
    print(f"| {name[:24]} | {row['sigma_hat']:.4f} | {row['a']:.2e} | {row['iterations']} | "
          f"{row['phase_vs_prior']:.2f} | {row['measured']:.4f} | {row['noise_free']:.4f} | "
          + " | ".join(f"{row[n]:.4f}" for n in NAMES) + " | "
          + " | ".join(f"{row[f'cover_{n}']:.3f}" for n in NAMES)
          + f" | {row['long_measured']:.3f} | {row['long_filter']:.3f} | {row['long_oracle']:.3f} |")


def run_noise(args, base: TIEBase, prior, files, noise: float) -> None:
    """Print the table of one noise std: one row per validation pair, then the measured/predicted ratios."""
    print(f"\nnoise std {noise:g} (per plane, of the mean intensity)")
    print("| image | σ̂ | a (µm⁻⁴) | it | var φ / prior | measured | noise-free | "
          + " | ".join(f"pred {n}" for n in NAMES) + " | " + " | ".join(f"cov95 {n}" for n in NAMES)
          + f" | >{args.long_px:g} px: measured | pred filter | oracle |")
    print("|---" * (10 + 2 * len(NAMES)) + "|")
    rows = []
    for i in range(args.images):
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 1, i]))  # same object at every noise
        sample = simulate_qpi(rng, args.size, source_files=files, noise_std=noise, natural_fraction=1.0)
        rows.append(image_row(sample, base, prior, args.long_px))
        print_row(sample.source, rows[-1])
    for name in NAMES:
        ratio = np.array([r["measured"] / r[name] for r in rows])
        pooled = np.mean([r["measured"] for r in rows]) / np.mean([r[name] for r in rows])
        print(f"{name}: measured / predicted: geometric mean {np.exp(np.mean(np.log(ratio))):.2f} "
              f"(range {ratio.min():.2f}–{ratio.max():.2f}; pooled {pooled:.2f}); "
              f"mean coverage of ±1.96·√predicted {np.mean([r[f'cover_{name}'] for r in rows]):.3f}")
    long = np.mean([r["long_measured"] for r in rows])
    noise_free = np.mean([r["noise_free"] / r["measured"] for r in rows])
    print(f"measured share at wavelengths > {args.long_px:g} px: mean {long:.3f}; "
          f"noise-free / measured error variance: mean {noise_free:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cvdm-qpi-residual.safetensors")
    parser.add_argument("--source-images", type=Path, default=Path("../shared/data/natural-images"))
    parser.add_argument("--prior-photos", type=Path, default=None,
                        help="fit the prior on crops of this folder's training split (default: bundled)")
    parser.add_argument("--prior-images", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--long-px", type=float, default=32.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-prior", action="store_true",
                        help="store the prior of --prior-images training phases (as training fits it: "
                             "TIEBase.with_prior) in --model's metadata, weights untouched, and stop")
    args = parser.parse_args()
    print(f"device: cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
          f"numpy {np.__version__}")
    base = TIEBase.from_dict(read_model_info(args.model).base)
    print(f"model {args.model.name}: base {json.dumps(base.to_dict())}")
    if args.write_prior:
        write_prior(args, base)
        return
    start = time.perf_counter()
    prior, windowed = fit_prior(args, base.pixel_um)
    print(f"prior fitted on {args.prior_images} training phases of {args.size}² "
          f"({args.prior_photos or 'bundled photos + textures'}; {time.perf_counter() - start:.1f} s):")
    print(f"  periodic: {json.dumps(prior.to_dict())}")
    print(f"  windowed: {json.dumps(windowed.to_dict())}")
    files = split_source_files(args.source_images)["validation"]
    print(f"{args.images} pairs of {args.size}² from the validation split of {args.source_images} "
          f"({len(files)} photos); variances in rad², offset removed")
    for noise in args.noise:
        run_noise(args, base, prior, files, noise)


if __name__ == "__main__":
    main()
