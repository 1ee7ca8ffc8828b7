"""Few-shot adaptation: how much of a user's data turns the shipped model into one for their structure.

A structure the shipped model never trained on. SR (``--task sr``): ``--kind``, the held-out
``nucleus`` or ``mitochondria`` family of :data:`~napari_cvdm.data.simulate.SR_UNSEEN_TEST` (the
project's unseen test optics). QPI (``--task qpi``): microtubule-like phase objects (the SR
simulator's microtubule density as the phase, :func:`~napari_cvdm.data.simulate.simulate_qpi`'s
optics and noise). For each K of ``--pairs`` and each budget of ``--minutes``:

- *fine-tuned*: the shipped model (``--shipped``) trained on K simulated pairs of ``--train-size``²
  with the Train widget's defaults (:class:`~napari_cvdm.config.TrainConfig` defaults, the shipped
  model as "Start from"), then calibrated on its held-out validation data as every run is;
- *scratch* (K in ``--scratch-pairs``): a new model (random weights, the widget's defaults for a new
  model) on the same pairs and budget.

The budget (``--budget``): ``card`` (default) turns the minutes into steps at the rate the shipped
model's card records for its own training on the project's 2-core CPU (``training.wall_time_s /
training.steps``; the run's learning-rate schedule then ends with it), so the result does not depend
on how loaded the machine running the benchmark is; ``wall`` trains
:data:`~napari_cvdm.config.FINE_TUNE_STEPS` steps, stopped after the minutes of wall-clock time on
``--threads`` threads (for a dedicated machine), and calibrates the stopped model the same way.

Each is scored on ``--images`` unseen images of ``--size``² of the same structure (a seed stream
disjoint from the training pairs') against the shipped model and the classical method: SR,
Richardson–Lucy (10 iterations, each image's true optics); QPI, TIE with its regulariser fitted on
the same K pairs (:meth:`~napari_cvdm.residual.TIEBase.fit`). Scores: MS-SSIM, PSNR and MAE on the
[0, 1] scale (SR: an affine fit of each estimate to its target; QPI: the phase offset removed, ÷ the
true phase's range; as benchmarks/unseen.py), and, for calibrated models, the share of pixels
inside the calibrated ± error at 95 %. Every model reconstructs as ``cvdm predict`` would (its
default sampler, ``--samples`` samples). Intervals: 95 % t-intervals over images, and of the paired
differences image by image.

Usage::

    python benchmarks/adapt.py --pairs 1 --minutes 15 --scratch-pairs 1 --save runs/adapt/k1-15.json
    python benchmarks/adapt.py --task qpi --pairs 1 2 4 --minutes 5 15
    python benchmarks/adapt.py --show runs/adapt/*.json     # saved runs of the same test images, merged
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.config import FINE_TUNE_STEPS, TrainConfig  # noqa: E402
from napari_cvdm.data.simulate import QPISimulationConfig, SR_UNSEEN_TEST, simulate_qpi, simulate_sr  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct  # noqa: E402
from napari_cvdm.residual import TIEBase  # noqa: E402
from napari_cvdm.train import Trainer  # noqa: E402
from napari_cvdm.uncertainty.apply import error_bound, model_calibration  # noqa: E402

RL_ITERATIONS = 10
SHIPPED = "shipped"
CLASSICAL = {"sr": "Richardson–Lucy", "qpi": "TIE"}
SHIPPED_MODELS = {"sr": "models/cvdm-sr-residual.safetensors", "qpi": "models/cvdm-qpi-residual.safetensors"}
#: Seed streams: training pairs and test images never share draws.
_TRAIN_STREAM, _TEST_STREAM = 1, 2


@dataclass
class Pair:
    """A simulated acquisition: ``input`` (SR widefield ADU; QPI stack ``(2, H, W)``), ``target``
    (SIM-like image; phase in rad), the raw pixel (µm) and, for SR, the optics Richardson–Lucy needs."""

    input: np.ndarray
    target: np.ndarray
    pixel_um: float
    optics: dict


def simulated_pairs(task: str, kind: str, count: int, size: int, seed: int, stream: int) -> list[Pair]:
    """``count`` pairs of the held-out structure (SR: ``kind`` on the unseen optics; QPI: microtubules)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    pairs = []
    for _ in range(count):
        if task == "sr":
            s = simulate_sr(rng, size, kind=kind, config=SR_UNSEEN_TEST)
            optics = {"na": s.na, "wavelength_um": s.wavelength_um, "offset": s.offset_adu}
            pairs.append(Pair(s.widefield, s.target, s.camera_pixel_um, optics))
        else:
            density = simulate_sr(rng, size, kind="microtubule").object
            q = simulate_qpi(rng, size, source=density)
            pairs.append(Pair(q.stack, q.phase, QPISimulationConfig().pixel_um, {}))
    return pairs


def classical_method(task: str, train: list[Pair]):
    """``estimate(pair)`` of the task's classical method (QPI: TIE fitted on the ``train`` pairs)."""
    if task == "sr":
        return lambda p: richardson_lucy_widefield(p.input, p.pixel_um, p.optics["na"], p.optics["wavelength_um"],
                                                   iterations=RL_ITERATIONS, offset=p.optics["offset"])
    optics = QPISimulationConfig()
    base, _ = TIEBase.fit([p.input for p in train], [p.target for p in train], optics.wavelength_um,
                          optics.dz_um, optics.pixel_um, float(np.mean([p.target.mean() for p in train])))
    return lambda p: base.phase(p.input)


def card_steps(model: str, minutes: float) -> int:
    """Steps that ``minutes`` buy at the rate ``model``'s card records for its own training."""
    training = load_model(model)[1].training
    return max(1, round(60 * minutes * training["steps"] / training["wall_time_s"]))


def adapt(task: str, samples: list[Pair], shipped: str | None, budget: tuple[str, float], out: Path,
          seed: int, reference: str) -> dict:
    """Train (fine-tune ``shipped``, or from scratch when None) on ``samples`` within ``budget``
    (``("card" | "wall", minutes)``); calibrate; return where the model is and what the run did."""
    kind, minutes = budget
    steps = card_steps(reference, minutes) if kind == "card" else FINE_TUNE_STEPS
    extra = {"base_correction": True} if task == "qpi" and shipped is None else {}  # as the shipped QPI model
    config = TrainConfig(task=task, init_model=shipped, steps=steps, output=str(out), seed=seed,
                         device="cpu", overwrite=True, input_pixel_size_um=samples[0].pixel_um, **extra)
    pairs = ([s.input for s in samples], [s.target for s in samples])
    started = time.monotonic()
    trainer = Trainer(config, pairs=pairs)
    result = trainer.fit(should_stop=lambda: kind == "wall" and time.monotonic() - started > 60 * minutes)
    trained_s = time.monotonic() - started
    if result.stopped:  # a finished run calibrates itself; a stopped one is calibrated the same way
        trainer.calibrate(result.model_path)
    _, info = load_model(result.model_path)
    return {"path": str(result.model_path), "steps": result.steps_done, "train_s": round(trained_s, 1),
            "total_s": round(time.monotonic() - started, 1), "calibrated": bool(info.calibration),
            "split": info.training.get("validation_split", {}).get("words", ""),
            "validation": result.validation}


def on_unit_scale(task: str, estimate, target) -> tuple[np.ndarray, np.ndarray, float]:
    """``(estimate, target, slope)`` on the target's [0, 1] scale: SR, the estimate's affine fit to the
    target; QPI, the phase offset removed and ÷ the true phase's range. ``slope`` maps the estimate's units."""
    if task == "qpi":
        slope = 1.0 / float(np.ptp(target))
        return metrics.to_unit_range(metrics.align_offset(estimate, target), target), metrics.to_unit_range(target), slope
    target = metrics.to_unit_range(target)
    slope = np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]
    return metrics.scale_to_reference(estimate, target), target, slope


def score(task: str, estimate, target, std=None) -> dict:
    """MS-SSIM, PSNR, MAE of ``estimate`` on the [0, 1] scale; coverage of ``std`` (the ± error at 95 %)."""
    fitted, target, slope = on_unit_scale(task, np.asarray(estimate, np.float64), np.asarray(target, np.float64))
    row = {"ms_ssim": metrics.ms_ssim(fitted, target, data_range=1.0),
           "psnr": metrics.psnr(fitted, target, data_range=1.0), "mae": metrics.mae(fitted, target, data_range=1.0)}
    if std is not None:
        row["coverage95"] = float(np.mean(np.abs(fitted - target) <= std * abs(slope)))
    return row


def score_models(task: str, models: dict[str, str], tests: list[Pair], classical, n_samples: int,
                 seed: int) -> dict[str, list]:
    """Rows per method: each model file in ``models`` and the classical method, image by image."""
    loaded = {name: load_model(path) for name, path in models.items()}
    settings = ReconstructionSettings(n_samples=n_samples, device="cpu", seed=seed)
    rows: dict[str, list] = {name: [] for name in [*models, CLASSICAL[task]]}
    for pair in tests:
        rows[CLASSICAL[task]].append(score(task, classical(pair), pair.target))
        for name, (model, info) in loaded.items():
            optics = {key: pair.optics[key] for key in ("na", "wavelength_um") if key in pair.optics}
            out = reconstruct(model, info, pair.input, settings, input_pixel_size_um=pair.pixel_um, **optics)
            calibration = model_calibration(info)
            bound = None if calibration is None else error_bound(np.sqrt(out.variance), calibration, 0.95)
            rows[name].append(score(task, out.mean, pair.target, bound))
    return rows


def interval(values) -> tuple[float, float, float]:
    """Mean and its 95 % t-interval ``(mean, low, high)``."""
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def table(rows: dict[str, list], runs: dict[str, dict], classical: str) -> str:
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
    for name in (n for n in rows if n not in (SHIPPED, classical)):
        for reference in (r for r in (SHIPPED, classical) if r in rows):
            diff = [a["ms_ssim"] - b["ms_ssim"] for a, b in zip(rows[name], rows[reference])]
            wins = sum(d > 0 for d in diff)
            lines.append(f"| {name} − {reference} | " + "{:+.4f} [{:+.4f}, {:+.4f}]".format(*interval(diff))
                         + f" | {wins} of {len(diff)} |")
    return "\n".join(lines)


def merged(results: list[dict]) -> list[dict]:
    """Saved runs scored on the same test images (same task, structure, count, size, N, seed) as one."""
    same = ("task", "kind", "images", "size", "samples", "seed")
    out: dict[tuple, dict] = {}
    for result in results:
        key = tuple(result["args"].get(name, "sr" if name == "task" else None) for name in same)
        if key not in out:
            out[key] = {**result, "rows": dict(result["rows"]), "runs": dict(result["runs"])}
            continue
        for name, rows in result["rows"].items():
            if name in out[key]["rows"]:  # a method scored twice must have scored the same
                assert np.allclose([r["ms_ssim"] for r in rows], [r["ms_ssim"] for r in out[key]["rows"][name]])
            out[key]["rows"].setdefault(name, rows)
        out[key]["runs"].update(result["runs"])
    return list(out.values())


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    print(f"device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s)", flush=True)
    shipped = args.shipped or SHIPPED_MODELS[args.task]
    tests = simulated_pairs(args.task, args.kind, args.images, args.size, args.seed, _TEST_STREAM)
    pool = simulated_pairs(args.task, args.kind, max(args.pairs + args.scratch_pairs), args.train_size, args.seed,
                           _TRAIN_STREAM)
    folder = Path(tempfile.mkdtemp(prefix="adapt-"))
    models, runs = ({} if args.no_shipped else {SHIPPED: shipped}), {}
    for minutes in args.minutes:
        for k, start in [(k, shipped) for k in args.pairs] + [(k, None) for k in args.scratch_pairs]:
            name = f"{'fine-tuned' if start else 'scratch'}, K = {k}, {minutes:g} min"
            runs[name] = adapt(args.task, pool[:k], start, (args.budget, minutes), folder / f"{len(runs)}.safetensors",
                               args.seed, shipped)
            models[name] = runs[name]["path"]
            print(f"{name}: {json.dumps(runs[name])}", flush=True)
    started = time.monotonic()
    classical = classical_method(args.task, pool[:max(args.pairs, default=1)])
    rows = score_models(args.task, models, tests, classical, args.samples, args.seed)
    return {"args": vars(args), "runs": runs, "rows": rows, "score_s": round(time.monotonic() - started, 1),
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{args.threads} thread(s)"}


def _plain(value):
    """JSON for numpy numbers (as floats) and paths (as text)."""
    return str(value) if isinstance(value, Path) else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sr", choices=tuple(SHIPPED_MODELS))
    parser.add_argument("--shipped", help="the model to fine-tune (default: the task's shipped residual model)")
    parser.add_argument("--kind", default="nucleus", choices=("nucleus", "mitochondria"), help="SR structure")
    parser.add_argument("--pairs", type=int, nargs="*", default=[1, 2, 4], help="K: training pairs")
    parser.add_argument("--scratch-pairs", type=int, nargs="*", default=[1])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0])
    parser.add_argument("--budget", default="card", choices=("card", "wall"),
                        help="minutes as steps at the shipped model's recorded rate, or as wall-clock time")
    parser.add_argument("--images", type=int, default=24, help="unseen test images")
    parser.add_argument("--size", type=int, default=256, help="test image side (target px)")
    parser.add_argument("--train-size", type=int, default=512, help="training pair side (target px)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shipped", action="store_true", help="do not score the shipped model (a saved run has)")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--show", type=Path, nargs="+", help="print the tables of saved runs")
    args = parser.parse_args()
    results = merged([json.loads(p.read_text()) for p in args.show]) if args.show else [run(args)]
    for result in results:
        shown = result["args"]
        task = shown.get("task", "sr")
        structure = shown["kind"] if task == "sr" else "microtubule phase objects"
        print(f"\n### {task.upper()} {structure}: {shown['images']} unseen images of {shown['size']}², "
              f"N = {shown['samples']} ({result['machine']})\n")
        print(table(result["rows"], result["runs"], CLASSICAL[task]))
    if args.save and not args.show:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results[0], indent=1, default=_plain))


if __name__ == "__main__":
    main()
