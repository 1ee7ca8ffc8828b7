"""Few-shot adaptation: how much of a user's data turns the shipped model into one for their structure.

A structure the shipped SR model never trained on (``--kind``: the held-out ``nucleus`` or
``mitochondria`` family of :data:`~napari_cvdm.data.simulate.SR_UNSEEN_TEST`, the project's unseen
test optics). For each K of ``--pairs`` and each budget of ``--minutes``:

- *fine-tuned*: the shipped model (``--shipped``) trained on K simulated pairs of ``--train-size``²
  with the Train widget's defaults (:class:`~napari_cvdm.config.TrainConfig` defaults, the shipped
  model as "Start from", :data:`~napari_cvdm.config.FINE_TUNE_STEPS` steps), stopped at the budget
  of wall-clock minutes on ``--threads`` CPU threads, then calibrated on its held-out validation data
  exactly as a finished run is (:meth:`napari_cvdm.train.Trainer.calibrate`);
- *scratch* (K in ``--scratch-pairs``): a new model (random weights, the widget's defaults for a new
  model) on the same pairs, the same steps and budget.

Each is scored on ``--images`` unseen images of ``--size``² of the same structure (a seed stream
disjoint from the training pairs') against the shipped model and Richardson–Lucy (10 iterations,
each image's true optics): MS-SSIM, PSNR and MAE on the [0, 1] scale (an affine fit of each
estimate to its target, as benchmarks/unseen.py), and, for calibrated models, the share of pixels
inside the calibrated ± error at 95 %. Every model reconstructs as ``cvdm predict`` would (its
default sampler, ``--samples`` samples). Intervals: 95 % t-intervals over images, and of the paired
differences image by image.

Usage::

    python benchmarks/adapt.py --pairs 1 --minutes 15 --scratch-pairs 1 --save runs/adapt/k1-15.json
    python benchmarks/adapt.py --show runs/adapt/*.json     # the tables of saved runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.config import FINE_TUNE_STEPS, TrainConfig  # noqa: E402
from napari_cvdm.data.simulate import SR_UNSEEN_TEST, simulate_sr  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402
from napari_cvdm.reconstruct import ReconstructionSettings, reconstruct  # noqa: E402
from napari_cvdm.train import Trainer  # noqa: E402
from napari_cvdm.uncertainty.apply import error_bound, model_calibration  # noqa: E402

RL_ITERATIONS = 10
SHIPPED, CLASSICAL = "shipped", "Richardson–Lucy"
#: Seed streams: training pairs and test images never share draws.
_TRAIN_STREAM, _TEST_STREAM = 1, 2


def simulated_pairs(kind: str, count: int, size: int, seed: int, stream: int) -> list:
    """``count`` SR samples of ``kind`` (widefield raw ADU, target) on the unseen test optics."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    return [simulate_sr(rng, size, kind=kind, config=SR_UNSEEN_TEST) for _ in range(count)]


def adapt(samples: list, shipped: str | None, minutes: float, out: Path, seed: int) -> dict:
    """Train (fine-tune ``shipped``, or from scratch when None) on ``samples`` for ``minutes``;
    calibrate; return where the model is and what the run did."""
    config = TrainConfig(task="sr", init_model=shipped, steps=FINE_TUNE_STEPS, output=str(out), seed=seed,
                         device="cpu", overwrite=True, input_pixel_size_um=samples[0].camera_pixel_um)
    pairs = ([s.widefield for s in samples], [s.target for s in samples])
    started = time.monotonic()
    trainer = Trainer(config, pairs=pairs)
    result = trainer.fit(should_stop=lambda: time.monotonic() - started > 60 * minutes)
    trained_s = time.monotonic() - started
    if result.stopped:  # a finished run calibrates itself; a stopped one is calibrated the same way
        trainer.calibrate(result.model_path)
    _, info = load_model(result.model_path)
    return {"path": str(result.model_path), "steps": result.steps_done, "train_s": round(trained_s, 1),
            "total_s": round(time.monotonic() - started, 1), "calibrated": bool(info.calibration),
            "split": info.training.get("validation_split", {}).get("words", ""),
            "validation": result.validation}


def score(estimate, target, pixel_nm: float, std=None) -> dict:
    """MS-SSIM, PSNR, MAE of ``estimate`` fitted to ``target`` on [0, 1]; coverage of ``std`` (±, 95 %)."""
    target = metrics.to_unit_range(target)
    slope = np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]
    fitted = metrics.scale_to_reference(estimate, target)
    row = {"ms_ssim": metrics.ms_ssim(fitted, target, data_range=1.0),
           "psnr": metrics.psnr(fitted, target, data_range=1.0), "mae": metrics.mae(fitted, target, data_range=1.0)}
    if std is not None:
        row["coverage95"] = float(np.mean(np.abs(fitted - target) <= std * abs(slope)))
    return row


def score_models(models: dict[str, str], tests: list, n_samples: int, seed: int) -> dict[str, list]:
    """Rows per method: each model file in ``models`` and Richardson–Lucy, image by image."""
    loaded = {name: load_model(path) for name, path in models.items()}
    settings = ReconstructionSettings(n_samples=n_samples, device="cpu", seed=seed)
    rows: dict[str, list] = {name: [] for name in [*models, CLASSICAL]}
    for sample in tests:
        pixel_nm = 1000 * sample.target_pixel_um
        rl = richardson_lucy_widefield(sample.widefield, sample.camera_pixel_um, sample.na, sample.wavelength_um,
                                       iterations=RL_ITERATIONS, offset=sample.offset_adu)
        rows[CLASSICAL].append(score(rl, sample.target, pixel_nm))
        for name, (model, info) in loaded.items():
            out = reconstruct(model, info, sample.widefield, settings, input_pixel_size_um=sample.camera_pixel_um)
            calibration = model_calibration(info)
            bound = None if calibration is None else error_bound(np.sqrt(out.variance), calibration, 0.95)
            rows[name].append(score(out.mean, sample.target, pixel_nm, bound))
    return rows


def interval(values) -> tuple[float, float, float]:
    """Mean and its 95 % t-interval ``(mean, low, high)``."""
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def table(rows: dict[str, list], runs: dict[str, dict]) -> str:
    """Markdown: each method's mean [95 % interval] per score, then paired differences."""
    keys = ("ms_ssim", "psnr", "mae", "coverage95")
    lines = ["| method | steps | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, method_rows in rows.items():
        cells = []
        for key in keys:
            values = [r[key] for r in method_rows if key in r]
            cells.append("–" if not values else "{:.4f} [{:.4f}, {:.4f}]".format(*interval(values)))
        lines.append(f"| {name} | {runs.get(name, {}).get('steps', '–')} | " + " | ".join(cells) + " |")
    lines += ["", "| paired MS-SSIM difference | mean [95 %] | better on |", "|---|---|---|"]
    for name in (n for n in rows if n not in (SHIPPED, CLASSICAL)):
        for reference in (SHIPPED, CLASSICAL):
            diff = [a["ms_ssim"] - b["ms_ssim"] for a, b in zip(rows[name], rows[reference])]
            wins = sum(d > 0 for d in diff)
            lines.append(f"| {name} − {reference} | " + "{:+.4f} [{:+.4f}, {:+.4f}]".format(*interval(diff))
                         + f" | {wins} of {len(diff)} |")
    return "\n".join(lines)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    tests = simulated_pairs(args.kind, args.images, args.size, args.seed, _TEST_STREAM)
    pool = simulated_pairs(args.kind, max(args.pairs + args.scratch_pairs), args.train_size, args.seed,
                           _TRAIN_STREAM)
    folder = Path(tempfile.mkdtemp(prefix="adapt-"))
    models, runs = {SHIPPED: args.shipped}, {}
    for minutes in args.minutes:
        for k, start in [(k, args.shipped) for k in args.pairs] + [(k, None) for k in args.scratch_pairs]:
            name = f"{'fine-tuned' if start else 'scratch'}, K = {k}, {minutes:g} min"
            runs[name] = adapt(pool[:k], start, minutes, folder / f"{len(runs)}.safetensors", args.seed)
            models[name] = runs[name]["path"]
            print(f"{name}: {json.dumps(runs[name])}", flush=True)
    started = time.monotonic()
    rows = score_models(models, tests, args.samples, args.seed)
    return {"args": vars(args), "runs": runs, "rows": rows, "score_s": round(time.monotonic() - started, 1),
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{args.threads} thread(s)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shipped", default="models/cvdm-sr-residual.safetensors")
    parser.add_argument("--kind", default="nucleus", choices=("nucleus", "mitochondria"))
    parser.add_argument("--pairs", type=int, nargs="*", default=[1, 2, 4], help="K: training pairs")
    parser.add_argument("--scratch-pairs", type=int, nargs="*", default=[1])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0])
    parser.add_argument("--images", type=int, default=24, help="unseen test images")
    parser.add_argument("--size", type=int, default=256, help="test image side (target px)")
    parser.add_argument("--train-size", type=int, default=512, help="training pair side (target px)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--show", type=Path, nargs="+", help="print the tables of saved runs")
    args = parser.parse_args()
    results = [json.loads(p.read_text()) for p in args.show] if args.show else [run(args)]
    for result in results:
        shown = result["args"]
        print(f"\n### SR {shown['kind']}: {shown['images']} unseen images of {shown['size']}², "
              f"N = {shown['samples']} ({result['machine']})\n")
        print(table(result["rows"], result["runs"]))
    if args.save and not args.show:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results[0], indent=1, default=float))


if __name__ == "__main__":
    main()
