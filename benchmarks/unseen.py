"""Models against the best classical methods on images unlike their training sources.

"Unseen" (docs/data.md):

- QPI: phase objects from the *test split by file* of a folder of photos
  (``--source-images``; the 280 research photos of ../shared/data/natural-images). The
  shipped and benchmarked models were trained on scikit-image's bundled photos and
  procedural textures, so no test photo was ever seen by them. Full images of
  ``--size`` px at each noise std of ``--noise`` (and ``--large-images`` of
  ``--large-size`` px at ``--large-noise``); FFT-TIE and US-TIE get their Tikhonov
  regulariser (and FFT-TIE its boundary) chosen per noise level on the *validation*
  split's photos, never on the test photos.
- SR: :data:`~napari_cvdm.data.simulate.SR_UNSEEN_TEST` (optics, photon counts, densities
  and widths outside the training ranges, and two structure families never trained
  on), kinds in turn. Richardson–Lucy (10 iterations, each image's true optics),
  bicubic upsampling, and the residual model's own direct predictor (trained jointly,
  inside the same budget: the regression baseline at equal budget).

Every model runs through :func:`napari_cvdm.engine.reconstruct` exactly as a user's
``cvdm predict`` would (N samples, the model's default sampler, 256-px tiles).
Scores: MS-SSIM, MAE and PSNR on the [0, 1] scale (QPI: offset removed, ÷ the true phase's range;
SR: CARE-style affine fit to the target), error power per octave band (contribution to
the MSE, mean over images), FRC resolution of the mean and of one sample against the
target, coverage of ±1.96 std, Spearman(std, |error|) and Spearman(λ, variance) (λ is
read from the γ map: γ(½) = exp(−λ τ̃(½)) is decreasing in λ). A residual model also gets
the rows of its plain sample mean (the refinement not shrunk; the model's column ``refinement_weight``
gives the w its reconstruction used) and of its base alone.

Usage::

    python benchmarks/unseen.py --task qpi --source-images ../shared/data/natural-images \\
        --model CVDM-residual=runs/qpi-residual.safetensors --model CVDM-paper=models/cvdm-qpi-small.safetensors
    python benchmarks/unseen.py --task sr --model CVDM-residual=runs/sr-residual.safetensors

Prints the device and Markdown tables, and each model paired image by image against the
classical methods; ``--save FILE`` writes the per-image rows as JSON, and ``--show`` prints
saved runs of the same images together (e.g. a model beside the QPI regression baseline)::

    python benchmarks/unseen.py --task qpi --show runs/cvdm.json runs/qpi-regression/scores.json \\
        --reference US-TIE regression
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data.simulate import (  # noqa: E402
    SR_UNSEEN_TEST, QPISimulationConfig, simulate_qpi, simulate_sr, split_source_files,
)
from napari_cvdm.physics import upsample  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402
from napari_cvdm.physics.tie import BOUNDARIES, fft_tie, us_tie  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, reconstruct_base  # noqa: E402

RL_ITERATIONS = 10
CLASSICAL = {"qpi": ("FFT-TIE", "US-TIE"), "sr": ("Richardson–Lucy", "bicubic")}
REGULARISERS = np.logspace(-6, 0, 13)


def _scores(estimate, target, pixel, *, sample=None, std=None, gamma=None) -> dict:
    """One image's row; ``estimate``/``target``/``sample`` on the [0, 1] scale, ``std`` on it too."""
    row = {
        "ms_ssim": metrics.ms_ssim(estimate, target, data_range=1.0),
        "mae": metrics.mae(estimate, target, data_range=1.0),
        "psnr": metrics.psnr(estimate, target, data_range=1.0),
        "bands": metrics.octave_error_power(estimate, target),
        "frc": metrics.frc_resolution(estimate, target, pixel),
    }
    if sample is not None:
        row["frc_sample"] = metrics.frc_resolution(sample, target, pixel)
    if std is not None and np.ptp(std) > 0:
        error = np.abs(estimate - target)
        row["coverage95"] = float(np.mean(error <= 1.96 * std))
        row["spearman_std_error"] = float(spearmanr(std.ravel(), error.ravel()).statistic)
        row["mse_over_variance"] = float(np.mean(error**2) / np.mean(std**2))
        if gamma is not None and np.ptp(gamma) > 0:
            row["spearman_lambda_variance"] = float(-spearmanr(gamma.ravel(), (std**2).ravel()).statistic)
    return row


def _model_rows(models, image, target_unit, pixel, args, to_unit, **optics) -> dict:
    """Rows of every model on one input; ``to_unit(estimate)`` maps a result onto the [0, 1] target scale."""
    rows = {}
    settings = ReconstructionSettings(n_samples=args.samples, device=args.device, seed=args.seed,
                                      keep_samples=True)
    for name, (model, info) in models.items():
        out = reconstruct(model, info, image, settings, **optics)
        mean, slope = to_unit(out.mean)
        rows[name] = _scores(mean, target_unit, pixel, sample=to_unit(out.samples[0], slope)[0],
                             std=np.sqrt(out.variance) * abs(slope), gamma=out.gamma_map)
        base = reconstruct_base(model, info, image, device=args.device,
                                **{k: v for k, v in optics.items() if k != "na"})  # the base needs no NA
        if base is not None:
            rows[name]["refinement_weight"] = out.metadata["refinement_weight"][0]
            rows[f"{name}: plain sample mean"] = _scores(to_unit(out.samples.mean(axis=-3), slope)[0], target_unit,
                                                         pixel, std=np.sqrt(out.variance) * abs(slope))
            rows[f"{name}: base alone"] = _scores(to_unit(base)[0], target_unit, pixel)
    return rows


# ----------------------------------------------------------------------------- QPI


def _qpi_pair(rng, files, size, noise):
    sample = simulate_qpi(rng, size, source_files=files, noise_std=noise, natural_fraction=1.0)
    return sample.stack, sample.phase


def _phase_to_unit(estimate, phase):
    """The offset-aligned estimate on the true phase's [0, 1] scale, and that scale's factor."""
    return metrics.to_unit_range(metrics.align_offset(estimate, phase), phase), 1.0 / float(np.ptp(phase))


def interval(values) -> tuple[float, float, float, int]:
    """Mean, 95 % interval (Student t over images) and n of the finite ``values``."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def cell(values, digits: int) -> str:
    mean, low, high, n = interval(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f}"  # one image: no interval
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({model}), {torch.get_num_threads()} threads"


def tune_tie(args, files, noise, optics) -> dict:
    """FFT-TIE (a, boundary) and US-TIE a with the lowest MAE on validation photos at this noise.

    Cached in ``--tuning`` (JSON, keyed by noise and size): the choice depends only on the
    validation photos, so every model's run scores against the same tuned solvers."""
    key = f"{noise:g}/{args.size}/{args.tune_images}"
    cache = json.loads(args.tuning.read_text()) if args.tuning and args.tuning.is_file() else {}
    if key in cache:
        return {"fft_tie": tuple(cache[key]["fft_tie"]), "us_tie": cache[key]["us_tie"]}
    tuned = _tune(args, files, noise, optics)
    if args.tuning:
        cache[key] = tuned
        args.tuning.write_text(json.dumps(cache, indent=1))
    return tuned


def validation_pairs(args, files, noise) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (stack, phase) pairs every classical solver is tuned on at this noise."""
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 1, int(noise * 1e4)]))
    return [_qpi_pair(rng, files, args.size, noise) for _ in range(args.tune_images)]


def _tune(args, files, noise, optics) -> dict:
    pairs = validation_pairs(args, files, noise)

    def mae(solver):
        return np.mean([np.abs(metrics.align_offset(solver(stack), phase) - phase).mean() for stack, phase in pairs])

    fft = min(((mae(lambda s, a=a, b=b: fft_tie(s, *optics, a, b)), a, b)
               for a in REGULARISERS for b in BOUNDARIES))
    # US-TIE iterates numerical propagation, so it is tuned on a coarser grid around FFT-TIE's choice
    near = [a for a in REGULARISERS if abs(np.log10(a / fft[1])) <= 1.01]
    us = min(((mae(lambda s, a=a: us_tie(s, *optics, a)), a) for a in near))
    return {"fft_tie": fft[1:], "us_tie": us[1]}


def run_qpi(args, models) -> dict:
    config = QPISimulationConfig()
    optics = (config.dz_um, config.wavelength_um, config.pixel_um)
    split = split_source_files(args.source_images)
    print(f"QPI photos by file: {len(split['train'])} train / {len(split['validation'])} validation / "
          f"{len(split['test'])} test (test photos only below; tuning on validation photos)")
    results = {}
    sets = [(noise, args.size, args.images) for noise in args.noise] if args.images else []
    if args.large_images:
        sets.append((args.large_noise, args.large_size, args.large_images))
    for noise, size, count in sets:
        start = time.perf_counter()
        tuned = tune_tie(args, split["validation"], noise, optics)
        if args.tune_only:
            print(f"noise {noise:g}: {tuned} ({time.perf_counter() - start:.0f} s)", flush=True)
            continue
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2, int(noise * 1e4), size]))
        rows: dict[str, list] = {}
        for _ in range(count):
            stack, phase = _qpi_pair(rng, split["test"], size, noise)
            target = metrics.to_unit_range(phase)
            classical = {"FFT-TIE": fft_tie(stack, *optics, *tuned["fft_tie"]),
                         "US-TIE": us_tie(stack, *optics, tuned["us_tie"])}
            image_rows = {name: _scores(_phase_to_unit(est, phase)[0], target, config.pixel_um)
                          for name, est in classical.items()}

            def to_unit(estimate, slope=None, phase=phase):
                return _phase_to_unit(estimate, phase)

            image_rows.update(_model_rows(models, stack, target, config.pixel_um, args, to_unit))
            for name, row in image_rows.items():
                rows.setdefault(name, []).append(row)
        key = f"noise {noise:g}, {count} × {size}²"
        results[key] = rows
        print(f"\n### QPI {key} (tuned on validation: FFT-TIE a = {tuned['fft_tie'][0]:.2g} µm⁻⁴, "
              f"{tuned['fft_tie'][1]}; US-TIE a = {tuned['us_tie']:.2g} µm⁻⁴; {time.perf_counter() - start:.0f} s)\n")
        print_table(rows)
        print_paired(rows, CLASSICAL["qpi"])
    return results


# ----------------------------------------------------------------------------- SR


def run_sr(args, models) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2]))
    results = {}
    for kind in SR_UNSEEN_TEST.kinds:
        rows: dict[str, list] = {}
        for _ in range(args.images):
            sample = simulate_sr(rng, args.size, kind=kind, config=SR_UNSEEN_TEST)
            target = metrics.to_unit_range(sample.target)
            pixel = 1000 * sample.target_pixel_um

            def to_unit(estimate, slope=None, target=target):
                if slope is None:
                    slope = np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]
                return metrics.scale_to_reference(estimate, target), slope

            classical = {
                "Richardson–Lucy": richardson_lucy_widefield(sample.widefield, sample.camera_pixel_um, sample.na,
                                                             sample.wavelength_um, iterations=RL_ITERATIONS,
                                                             offset=sample.offset_adu),
                "bicubic": upsample(sample.widefield.astype(np.float32)[None], 2)[0],
            }
            image_rows = {name: _scores(to_unit(est)[0], target, pixel) for name, est in classical.items()}
            image_rows.update(_model_rows(models, sample.widefield, target, pixel, args, to_unit,
                                          input_pixel_size_um=sample.camera_pixel_um,
                                          wavelength_um=sample.wavelength_um, na=sample.na))
            for name, row in image_rows.items():
                rows.setdefault(name, []).append(row)
        results[kind] = rows
        print(f"\n### SR {kind} ({args.images} × {args.size}², SR_UNSEEN_TEST; FRC in nm)\n")
        print_table(rows)
        print_paired(rows, CLASSICAL["sr"])
    return results


# ----------------------------------------------------------------------------- output


def _mean(rows, key):
    values = np.array([r[key] for r in rows if key in r and np.isfinite(r[key])], dtype=float)
    return (float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0) \
        if len(values) else (float("nan"), float("nan"))


def print_table(rows: dict[str, list]) -> None:
    keys = ("ms_ssim", "mae", "psnr", "frc", "frc_sample", "coverage95", "spearman_std_error",
            "mse_over_variance", "spearman_lambda_variance", "refinement_weight")
    print("| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, method_rows in rows.items():
        cells = []
        for key in keys:
            mean, sem = _mean(method_rows, key)
            cells.append("" if not np.isfinite(mean) else f"{mean:.4g} ± {sem:.2g}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    bands = {name: np.array([r["bands"] for r in method_rows]) for name, method_rows in rows.items()}
    n = min(len(b[0]) for b in bands.values())
    print("\nerror power per octave (cycles per image: 1–2, 2–4, …; ×1e-4, mean ± s.e. over images)\n")
    print("| method | " + " | ".join(f"{2**k}–{2**(k+1)}" for k in range(n)) + " |\n|---|" + "---|" * n)
    for name, b in bands.items():
        sem = b[:, :n].std(0, ddof=1) / np.sqrt(len(b)) if len(b) > 1 else np.zeros(n)
        print(f"| {name} | " + " | ".join(f"{1e4 * m:.3g} ± {1e4 * s:.2g}" for m, s in zip(b[:, :n].mean(0), sem))
              + " |")


PAIRED = (("ms_ssim", "MS-SSIM", 1), ("mae", "MAE", -1), ("psnr", "PSNR", 1))


def print_paired(rows: dict[str, list], references: tuple[str, ...]) -> None:
    """Each model minus each reference, image by image: mean ± s.e. of the difference and the
    number of images on which the model is better (the verdict a row of means cannot give)."""
    models = [name for name in rows if name not in references and ":" not in name and "base alone" not in name]
    references = [name for name in references if name in rows]
    if not models or not references:
        return
    header = " | ".join(f"Δ {label} | better" for _, label, _ in PAIRED)
    print(f"\npaired over images (model − reference, mean ± s.e.; better: images where the model wins)\n\n"
          f"| model | reference | {header} |\n|---|---|" + "---|---|" * len(PAIRED))
    for model in models:
        for reference in references:
            cells = []
            for key, _, sign in PAIRED:
                diff = np.array([m[key] - r[key] for m, r in zip(rows[model], rows[reference])], dtype=float)
                sem = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
                cells.append(f"{diff.mean():+.4f} ± {sem:.4f} | {int(np.sum(sign * diff > 0))}/{len(diff)}")
            print(f"| {model} | {reference} | " + " | ".join(cells) + " |")


def merge_saved(paths: list[Path]) -> dict:
    """The rows of several saved runs (``--save`` here, ``scores.json`` of qpi_regression.py) joined by set.

    Runs are joined only where they scored the same images: their base-alone rows (or rows of the
    same name) must agree image by image to 1e-6 MS-SSIM; the repeated row is kept once."""
    merged: dict[str, dict] = {}
    for path in paths:
        for key, rows in json.loads(path.read_text()).items():
            into = merged.setdefault(key, {})
            for name, method_rows in rows.items():
                same = [n for n in into if n == name or (n.endswith("base alone") and name.endswith("base alone"))]
                if same and not all(len(into[n]) == len(method_rows) and np.allclose(
                        [r["ms_ssim"] for r in into[n]], [r["ms_ssim"] for r in method_rows], atol=1e-6)
                        for n in same):
                    sys.exit(f"unseen: {path}: '{name}' in set '{key}' differs from '{same[0]}' of an earlier "
                             "run; not the same images")
                if name not in into and not (same and name.endswith("base alone")):
                    into[name] = method_rows
            if len({len(r) for r in into.values()}) > 1:
                sys.exit(f"unseen: {path}: set '{key}' holds a different number of images than an earlier run's")
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("qpi", "sr"), required=True)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--source-images", type=Path, help="QPI: folder of photos, split by file")
    parser.add_argument("--images", type=int, default=8, help="per noise level (QPI) or structure (SR)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    parser.add_argument("--large-images", type=int, default=2)
    parser.add_argument("--large-size", type=int, default=512)
    parser.add_argument("--large-noise", type=float, default=0.05)
    parser.add_argument("--tune-images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--tuning", type=Path, default=Path("eval/qpi-tie-tuning.json"),
                        help="cache of the TIE regularisers tuned on validation photos")
    parser.add_argument("--tune-only", action="store_true", help="tune the TIE solvers, score nothing")
    parser.add_argument("--show", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of saved runs of the same images (--save here, scores.json of "
                             "qpi_regression.py), joined by set, with every model paired against every other "
                             "row named by --reference; score nothing")
    parser.add_argument("--reference", nargs="+", help="with --show: the rows to pair against "
                                                       "(default: the task's classical methods)")
    args = parser.parse_args()
    if args.show:
        for key, rows in merge_saved(args.show).items():
            print(f"\n### {args.task.upper()} {key}\n")
            print_table(rows)
            print_paired(rows, tuple(args.reference or CLASSICAL[args.task]))
        return
    torch.set_num_threads(args.threads)
    print(f"device: {args.device} ({platform.processor() or 'cpu'}), torch {torch.__version__}, "
          f"{args.threads} CPU threads; N = {args.samples}, each model's default sampler")
    models = {}
    for entry in args.model:
        name, _, path = entry.partition("=")
        model, info = load_model(path)
        print(f"{name}: {path} ({info.config.formulation} formulation, {info.training.get('steps')} steps)")
        models[name] = (model, info)
    if args.task == "qpi" and args.source_images is None:
        parser.error("--source-images is needed for the unseen QPI set")
    results = run_qpi(args, models) if args.task == "qpi" else run_sr(args, models)
    if args.save:
        args.save.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
