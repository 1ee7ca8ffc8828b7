"""Calibrated error bars on unseen images, and the out-of-its-depth warning's rates.

For each task, with the shipped residual model, N samples, its default sampler:

- calibrate (split-conformal, :func:`napari_cvdm.uncertainty.conformal.fit_calibration`, as
  ``cvdm calibrate`` does) on ``--calibration-images`` images of the unseen test pool of
  the models issue, and test on ``--test-images`` others drawn the same way:
  - QPI: phase objects from the *test split by file* of ``--source-images`` (the pool of
    ``benchmarks/unseen.py``), the calibration images from every third test photo (sorted
    by name) and the test images from the other photos, so no source photo is shared;
    noise std cycling through ``--noise`` (one level per image, the same for both sets);
  - SR: :data:`~napari_cvdm.data.simulate.SR_UNSEEN_TEST`, kinds in turn, calibration and
    test images from independent random streams (procedural structures: no shared object);
- report coverage of ``mean ± z·calibrated std`` at 90 and 95 % pooled over the test
  pixels and its per-image spread, the uncalibrated coverage, and UCE before and after
  (the 95 % calibrated std), in the model's output units;
- the warning (:func:`napari_cvdm.uncertainty.ood.check_in_distribution`) on the test images
  (inputs like the calibration data), and on ``--foreign-images`` deliberately foreign inputs
  each: another pixel size (QPI 0.42 µm instead of 0.21; SR camera 0.1 µm instead of 0.0626),
  another noise level (QPI noise std 0.4; SR 15 peak photons instead of 1500–6000) and a very
  different object (QPI: microtubule filaments as the phase; SR: a natural photo as the
  fluorophore density); and, against the calibration stored in the shipped model file
  (its training run's validation crops), on the unseen calibration + test images;
- the calibrated coverage on each foreign set: whether the error bars still hold where the
  warning fires, or stays silent.

Images are ``--size``² on the target grid (SR: ``size/2``² widefield inputs). Each image's
reconstruction is checkpointed to ``--out``/TASK/SET_INDEX.npz (mean, std, target in the model's
units, raw input, pixel size), so a rerun resumes; the figures go to ``--out``/results.json.

Usage (what docs/results.md reports)::

    nohup nice /work/main/.venv/bin/python benchmarks/calibration_goal.py \\
        --source-images /work/shared/data/natural-images > /tmp/calgoal.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data import simulate  # noqa: E402
from napari_cvdm.data.simulate import (  # noqa: E402
    SR_UNSEEN_TEST, QPISimulationConfig, qpi_source_image, render_structure, simulate_qpi, simulate_sr,
    split_source_files,
)
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402
from napari_cvdm.uncertainty.apply import calibrated_std  # noqa: E402
from napari_cvdm.uncertainty.calibrate import _aligned  # noqa: E402
from napari_cvdm.uncertainty.conformal import fit_calibration  # noqa: E402
from napari_cvdm.uncertainty.metrics import coverage, uce  # noqa: E402
from napari_cvdm.uncertainty.ood import (  # noqa: E402
    DistributionSummary, check_in_distribution, summarize_distribution,
)

MODELS = {"qpi": "models/cvdm-qpi-residual.safetensors", "sr": "models/cvdm-sr-residual.safetensors"}
FOREIGN = ("pixel", "noise", "object")
QPI_FOREIGN_PIXEL_UM = 0.42
QPI_FOREIGN_NOISE = 0.4
SR_FOREIGN_TARGET_PIXEL_UM = 0.05  # camera 0.1 µm
SR_FOREIGN_PEAK_PHOTONS = 15.0
LEVELS = (0.9, 0.95)
SPREAD = (0.0, 0.1, 0.5, 0.9, 1.0)


# ----------------------------------------------------------------------------- the images


def _stream(args, task: str, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([args.seed, ("qpi", "sr").index(task),
                                                         ("calibration", "test", *FOREIGN).index(name)]))


def qpi_images(args, name: str, count: int) -> list[tuple]:
    """``(input stack (2, H, W), phase (H, W), input pixel µm, source name)`` of one QPI set."""
    photos = split_source_files(args.source_images)["test"]
    files = photos[0::3] if name == "calibration" else [p for i, p in enumerate(photos) if i % 3]
    rng, out = _stream(args, "qpi", name), []
    for i in range(count):
        noise = args.noise[i % len(args.noise)]
        if name == "pixel":
            config = QPISimulationConfig(pixel_um=QPI_FOREIGN_PIXEL_UM)
            sample = simulate_qpi(rng, args.size, config, noise_std=noise, source_files=files, natural_fraction=1.0)
            out.append((sample.stack, sample.phase, QPI_FOREIGN_PIXEL_UM, sample.source))
            continue
        if name == "object":
            source = render_structure("microtubule", (args.size, args.size), 0.21, rng)
            sample = simulate_qpi(rng, args.size, source=source, noise_std=noise)
        else:
            noise = QPI_FOREIGN_NOISE if name == "noise" else noise
            sample = simulate_qpi(rng, args.size, noise_std=noise, source_files=files, natural_fraction=1.0)
        out.append((sample.stack, sample.phase, QPISimulationConfig().pixel_um, sample.source))
    return out


def sr_images(args, name: str, count: int) -> list[tuple]:
    """``(widefield (h, w), target (H, W), camera pixel µm, source name)`` of one SR set (each its own)."""
    rng, out = _stream(args, "sr", name), []
    photos = split_source_files(args.source_images)["test"]
    for i in range(count):
        kind = SR_UNSEEN_TEST.kinds[i % len(SR_UNSEEN_TEST.kinds)]
        config, peak = SR_UNSEEN_TEST, None
        if name == "pixel":
            config = dataclasses.replace(SR_UNSEEN_TEST, target_pixel_um=SR_FOREIGN_TARGET_PIXEL_UM)
        elif name == "noise":
            peak = SR_FOREIGN_PEAK_PHOTONS
        if name == "object":  # a photo as the fluorophore density, through the simulator's own optics and noise
            photo, _ = qpi_source_image(rng, args.size, 1.0, photos)
            with mock.patch.object(simulate, "render_structure", lambda *_: np.asarray(photo, np.float64)):
                sample = simulate_sr(rng, args.size, kind=kind, config=config)
        else:
            sample = simulate_sr(rng, args.size, kind=kind, config=config, peak_photons=peak)
        out.append((sample.widefield, sample.target, sample.camera_pixel_um, f"{name} {i}"))
    return out


# ----------------------------------------------------------------------------- reconstructions (checkpointed)


def reconstruct_set(args, task: str, name: str, count: int, model, info) -> list[dict]:
    """Per image: mean, std, target (model units, aligned as ``cvdm calibrate`` does), the unaligned
    ``raw_mean`` (for the data-consistency check), input, pixel."""
    folder = args.out / task
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}_{i:02d}.npz" for i in range(count)]
    if not all(p.is_file() for p in paths):
        images = (qpi_images if task == "qpi" else sr_images)(args, name, count)
        settings = ReconstructionSettings(n_samples=args.samples, device="cpu", seed=args.seed)
        for path, (image, target, pixel, _) in zip(paths, images):
            if path.is_file():
                continue
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the foreign pixel size is meant
                result = reconstruct(model, info, image, settings, input_pixel_size_um=pixel)
            raw_mean = np.squeeze(result.mean).astype(np.float64)
            std = np.sqrt(np.maximum(np.squeeze(result.variance).astype(np.float64), 0.0))
            mean, target = _aligned(raw_mean, np.asarray(target, np.float64), info)
            np.savez(path, mean=mean, raw_mean=raw_mean, std=std, target=target, input=image, pixel=pixel)
            print(f"{task} {path.stem}: {time.perf_counter() - start:.0f} s", flush=True)
    return [dict(np.load(p)) for p in paths]


# ----------------------------------------------------------------------------- the figures


def _spread(values) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(values, SPREAD)]


def _warning_rate(summary: DistributionSummary | None, images: list[dict]) -> dict | None:
    if summary is None or not images:
        return None
    fired = [check_in_distribution(summary, im["std"], im["input"], float(im["pixel"])) for im in images]
    return {"fired": sum(w is not None for w in fired), "of": len(images),
            "example": next((w for w in fired if w), None)}


def calibration_figures(calibration_set: list[dict], test_set: list[dict], task: str) -> tuple[dict, object]:
    """Coverage (pooled, per-image spread) and UCE on the test set, before and after calibration."""
    calibration = fit_calibration([im["mean"] for im in calibration_set], [im["std"] for im in calibration_set],
                                  [im["target"] for im in calibration_set])
    calibration.distribution = summarize_distribution([im["std"] for im in calibration_set],
                                                      [im["input"] for im in calibration_set],
                                                      float(calibration_set[0]["pixel"]), task)
    means, stds, targets = ([im[key] for im in test_set] for key in ("mean", "std", "target"))
    figures = {"scale": dict(zip(map(str, calibration.levels), calibration.scale))}
    for level in LEVELS:
        after = [calibrated_std(s, calibration, level) for s in stds]
        per_image = [coverage(m, s, t, (level,))[level] for m, s, t in zip(means, after, targets)]
        figures[f"coverage_{round(level * 100)}"] = {
            "uncalibrated": coverage(means, stds, targets, (level,))[level],
            "calibrated": coverage(means, after, targets, (level,))[level],
            "calibrated_per_image_spread": _spread(per_image)}
    figures["uce"] = {"uncalibrated": uce(means, stds, targets)}
    for level in calibration.levels:  # the std calibrated at each level (the _std_calibrated.tif one: 95 %)
        after = [calibrated_std(s, calibration, level) for s in stds]
        figures["uce"][f"calibrated_{round(level * 100)}"] = uce(means, after, targets)
    figures["uce"]["ratio_95"] = figures["uce"]["calibrated_95"] / figures["uce"]["uncalibrated"]
    # the calibrated std of _std_calibrated.tif: variance-matched, globally and per std bin
    fit_set = [[im[key] for im in calibration_set] for key in ("mean", "std", "target")]
    binned = fit_calibration(*fit_set, bins=10)
    unbinned_variance = fit_calibration(*fit_set, variance_bins=1)
    # the default calibration: one pooled quantile per level, the variance scale in 10 std bins
    for name, fitted in (("variance_matched", unbinned_variance), ("variance_matched_10_bins", calibration)):
        after = [calibrated_std(s, fitted) for s in stds]
        figures["uce"][name] = uce(means, after, targets)
        figures["uce"][f"ratio_{name}"] = figures["uce"][name] / figures["uce"]["uncalibrated"]
    for level in LEVELS:
        after = [calibrated_std(s, binned, level) for s in stds]
        per_image = [coverage(m, s, t, (level,))[level] for m, s, t in zip(means, after, targets)]
        figures[f"coverage_{round(level * 100)}"]["calibrated_10_bins"] = coverage(means, after, targets, (level,))[level]
        figures[f"coverage_{round(level * 100)}"]["calibrated_10_bins_per_image_spread"] = _spread(per_image)
    return figures, calibration


def resplit_uce_ratios(args, task: str, calibration_set: list[dict], test_set: list[dict]) -> dict:
    """The default calibration's UCE ratio over ``args.resplits`` random re-splits of the same images.

    Calibration and test images are pooled and split anew by *source* (QPI: a third of the source
    photos calibrate, the rest test, as in the fixed split; SR: a third of the images), seeded; the
    spread shows how much of the ratio is the draw of the calibration images. ``in_sample`` is the
    floor no mapping of the std can beat on the fixed test set: the calibration fitted on it.
    """
    images = calibration_set + test_set
    make = qpi_images if task == "qpi" else sr_images
    sources = [entry[3] for name, count in (("calibration", len(calibration_set)), ("test", len(test_set)))
               for entry in make(args, name, count)]
    names = sorted(set(sources))
    rng = np.random.default_rng(args.seed)

    def ratio(fit_on: list[dict], test_on: list[dict]) -> float:
        calibration = fit_calibration(*([im[key] for im in fit_on] for key in ("mean", "std", "target")))
        means, stds, targets = ([im[key] for im in test_on] for key in ("mean", "std", "target"))
        return uce(means, [calibrated_std(s, calibration) for s in stds], targets) / uce(means, stds, targets)

    ratios = []
    for _ in range(args.resplits):
        chosen = set(rng.permutation(names)[: max(1, round(len(names) / 3))].tolist())
        fit_on = [im for im, source in zip(images, sources) if source in chosen]
        test_on = [im for im, source in zip(images, sources) if source not in chosen]
        ratios.append(ratio(fit_on, test_on))
    return {"resplits": args.resplits, "spread": _spread(ratios),
            "fraction_at_most_half": float(np.mean(np.asarray(ratios) <= 0.5)),
            "in_sample": ratio(test_set, test_set)}


def task_figures(args, task: str) -> dict:
    model, info = load_model(MODELS[task])
    sets = {"calibration": args.calibration_images, "test": args.test_images,
            **{name: args.foreign_images for name in FOREIGN}}
    data = {name: reconstruct_set(args, task, name, count, model, info) for name, count in sets.items() if count}
    figures, calibration = calibration_figures(data["calibration"], data["test"], task)
    if args.resplits:
        figures["uce_resplits"] = resplit_uce_ratios(args, task, data["calibration"], data["test"])
    shipped = info.calibration.get("distribution")
    shipped = DistributionSummary.from_dict(shipped) if shipped else None
    # does the calibration still hold where the warning fires (or stays silent)?
    figures["foreign_coverage"] = {
        name: {f"calibrated_{round(level * 100)}": coverage(
            [im["mean"] for im in data[name]], [calibrated_std(im["std"], calibration, level) for im in data[name]],
            [im["target"] for im in data[name]], (level,))[level] for level in LEVELS}
        for name in FOREIGN if data.get(name)}
    figures["warning"] = {
        "like the calibration data (test images)": _warning_rate(calibration.distribution, data["test"]),
        **{f"foreign: {name}": _warning_rate(calibration.distribution, data.get(name, [])) for name in FOREIGN},
        "shipped calibration, unseen calibration + test images": _warning_rate(
            shipped, data["calibration"] + data["test"]),
    }
    return figures


def print_report(task: str, figures: dict) -> None:
    print(f"\n### {task.upper()}\n\n| level | uncalibrated | calibrated (pooled) | per image: min, p10, median, p90, max "
          "| 10 std bins (pooled) | per image |\n|---|---|---|---|---|---|")
    for level in LEVELS:
        entry = figures[f"coverage_{round(level * 100)}"]
        spread = ", ".join(f"{100 * v:.1f}" for v in entry["calibrated_per_image_spread"])
        binned = ", ".join(f"{100 * v:.1f}" for v in entry["calibrated_10_bins_per_image_spread"])
        print(f"| {level:.0%} | {100 * entry['uncalibrated']:.1f} % | {100 * entry['calibrated']:.1f} % | {spread} | "
              f"{100 * entry['calibrated_10_bins']:.1f} % | {binned} |")
    u = figures["uce"]
    after = ", ".join(f"{v:.4g} ({k.split('_')[1]} %)" for k, v in u.items()
                      if k.startswith("calibrated_") and k.split("_")[1].isdigit())
    print(f"\nUCE uncalibrated {u['uncalibrated']:.4g}; quantile-scaled {after}; ratio at 95 % {u['ratio_95']:.2f}; "
          f"variance-matched {u['variance_matched']:.4g} (ratio {u['ratio_variance_matched']:.2f}), with 10 std bins "
          f"{u['variance_matched_10_bins']:.4g} (ratio {u['ratio_variance_matched_10_bins']:.2f}); "
          f"std scales {figures['scale']}\n")
    for name, rate in figures["warning"].items():
        if rate is not None:
            print(f"- warning on {name}: {rate['fired']} of {rate['of']}")
    if "uce_resplits" in figures:
        r = figures["uce_resplits"]
        print(f"- UCE ratio of the default calibration over {r['resplits']} re-splits by source: min, p10, median, "
              f"p90, max {', '.join(f'{v:.2f}' for v in r['spread'])}; at most 0.5 in "
              f"{100 * r['fraction_at_most_half']:.0f} %; fitted on the test set itself {r['in_sample']:.2f}")
    for name, entry in figures.get("foreign_coverage", {}).items():
        print(f"- calibrated coverage on foreign {name}: " + ", ".join(
            f"{100 * value:.1f} % at {key.split('_')[1]} %" for key, value in entry.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=("qpi", "sr"), default=["qpi", "sr"])
    parser.add_argument("--source-images", type=Path, required=True, help="folder of photos, split by file")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=32)
    parser.add_argument("--foreign-images", type=int, default=4, help="per kind of foreign input")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="QPI noise std, cycled")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/calibration_goal"))
    parser.add_argument("--resplits", type=int, default=40,
                        help="random re-splits of the same images for the UCE ratio's spread (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cpu ({platform.processor() or 'cpu'}), torch {torch.__version__}, 1 thread; N = {args.samples}, "
          f"default sampler; {args.size}² target grid", flush=True)
    results = {}
    for task in args.tasks:
        results[task] = task_figures(args, task)
        print_report(task, results[task])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
