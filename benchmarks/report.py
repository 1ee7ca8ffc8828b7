"""Every figure the README and the model cards quote, regenerated on the unseen test sets.

One command::

    python benchmarks/report.py                 # both halves
    python benchmarks/report.py --only qpi      # QPI only (or --only sr)
    python benchmarks/report.py --write-docs    # also put the tables into README.md and docs/results.md

Test sets (docs/data.md): QPI phase objects from the *test* photos of ``--source-images``
(split by file) at noise 0, 0.02, 0.05 and 0.1, ``--images`` of 256² and ``--large-images``
of 512² per noise level; SR: the six structures of ``SR_UNSEEN_TEST`` (two families never
trained on, optics and photon counts outside the training ranges), ``--sr-images`` of
256² → 512² each. The image streams are those of ``benchmarks/unseen.py``.

Methods: all four shipped models (``models/``), each through
:func:`napari_cvdm.engine.reconstruct` with its default sampler and N = ``--samples``,
as ``cvdm predict`` runs it; FFT-TIE and US-TIE with the regulariser (and FFT-TIE's
boundary) tuned per noise level on the *validation* photos, and waveorder's thin-object
Tikhonov inversion tuned the same way when it is installed (``benchmarks/waveorder_qpi.py``);
Richardson–Lucy (10 iterations, each image's true optics) and bicubic upsampling; the regression
baseline at the residual model's budget: for SR the residual model's jointly trained direct
predictor, for QPI a network trained by ``benchmarks/qpi_regression.py``: the one shipped in
``benchmarks/baselines/qpi-regression/``, or another given with ``--regression FOLDER`` (with
``--no-regression``, or without a network, the row says "not run").

Each cell is the mean over images with its 95 % interval (Student t over images). Also
reported: the coverage of the raw ``mean ± 1.96 std`` and of the calibrated ± error at 95 %,
and the end-to-end seconds per image (the ``reconstruct`` call) on the named device.

Resumable: every image's rows are appended to ``--out``/``<task>.jsonl`` as they are made; a
run started again skips what is there (same ``--seed`` and ``--samples``; another setting
starts a new file). The default residual models run first over every set, the paper-formulation
models after them, so a stopped run has the defaults' figures on all sets. The tables printed
(and written to ``--out``/report.md) say how many images each cell rests on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import unseen  # noqa: E402
from unseen import cell, device_name  # noqa: E402
import waveorder_qpi  # noqa: E402
from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model, read_model_info  # noqa: E402
from napari_cvdm.data.simulate import (  # noqa: E402
    SR_UNSEEN_TEST, QPISimulationConfig, simulate_sr, split_source_files,
)
from napari_cvdm.physics import upsample  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402
from napari_cvdm.physics.tie import fft_tie, us_tie  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, reconstruct_base  # noqa: E402
from napari_cvdm.io.progress import file_digest  # noqa: E402
from napari_cvdm.model.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_TYPES  # noqa: E402
from napari_cvdm.uncertainty.apply import error_bound, model_calibration  # noqa: E402

MODELS = {  # name → file in models/, in the order they run (defaults first)
    "qpi": {"cvdm-qpi-residual": "cvdm-qpi-residual.safetensors", "cvdm-qpi-small": "cvdm-qpi-small.safetensors"},
    "sr": {"cvdm-sr-residual": "cvdm-sr-residual.safetensors", "cvdm-sr-small": "cvdm-sr-small.safetensors"},
}
CLASSICAL = {"qpi": ("US-TIE", "FFT-TIE", waveorder_qpi.NAME), "sr": ("Richardson–Lucy", "bicubic")}
REGRESSION = "regression (same budget)"
SHIPPED_REGRESSION = ROOT / "benchmarks" / "baselines" / "qpi-regression"
NOT_RUN_QPI = ("not run: pass --regression FOLDER (made by `python benchmarks/qpi_regression.py "
               "--out FOLDER`)")
COLUMNS = (("ms_ssim", "MS-SSIM", 3), ("mae", "MAE", 3), ("psnr", "PSNR (dB)", 1),
           ("coverage95", "coverage ±1.96 std", 2), ("coverage95_calibrated", "coverage calibrated 95 %", 2),
           ("seconds", "s / image", 1))
HEADLINE_SIZE = 256
HEADLINE_HEADER = ("| model | task | pixel size in → out | MS-SSIM on unseen images, mean [95 % interval]; "
                   "best tuned classical method on the same images |")


# ----------------------------------------------------------------------------- sets and methods


@dataclass
class TestSet:
    key: str
    task: str
    count: int
    size: int
    noise: float | None = None
    kind: str | None = None
    cache: list = field(default_factory=list)


def test_sets(args) -> list[TestSet]:
    if args.task == "qpi":
        sets = [TestSet(f"noise {n:g}, {args.size}²", "qpi", args.images, args.size, noise=n) for n in args.noise]
        sets += [TestSet(f"noise {n:g}, {args.large_size}²", "qpi", args.large_images, args.large_size, noise=n)
                 for n in args.noise if args.large_images]
        return [s for s in sets if s.count]
    return [TestSet(kind, "sr", args.sr_images, args.sr_size, kind=kind) for kind in SR_UNSEEN_TEST.kinds
            if args.sr_images]


class ImageStream:
    """The test images of one set, in the order of benchmarks/unseen.py's stream (QPI) or one
    stream per structure (SR); made once and kept, so a resumed run sees the same images."""

    def __init__(self, test_set: TestSet, args, files):
        self.set, self.files = test_set, files
        if test_set.task == "qpi":
            entropy = [args.seed, 2, int(test_set.noise * 1e4), test_set.size]
        else:
            entropy = [args.seed, 3, SR_UNSEEN_TEST.kinds.index(test_set.kind)]
        self.rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self.images: list = []

    def __getitem__(self, index: int):
        while len(self.images) <= index:
            if self.set.task == "qpi":
                self.images.append(unseen._qpi_pair(self.rng, self.files, self.set.size, self.set.noise))
            else:
                self.images.append(simulate_sr(self.rng, self.set.size, kind=self.set.kind, config=SR_UNSEEN_TEST))
        return self.images[index]


def _calibrated_coverage(info, std_native, error_unit, slope) -> float | None:
    calibration = model_calibration(info)
    if calibration is None:
        return None
    bound = error_bound(std_native, calibration, 0.95) * abs(slope)
    return float(np.mean(error_unit <= bound))


def model_rows(name, model, info, image, target, pixel, to_unit, args, regression_row: bool, **optics) -> dict:
    """Rows of one model on one image: the model (with timing and coverage), and for a residual
    model whose base is a trained predictor (SR) its base alone as the regression baseline."""
    settings = ReconstructionSettings(n_samples=args.samples, device=args.device, seed=args.seed)
    start = time.perf_counter()
    out = reconstruct(model, info, image, settings, **optics)
    seconds = time.perf_counter() - start
    mean, slope = to_unit(out.mean)
    std_native = np.sqrt(np.maximum(out.variance, 0.0))
    row = unseen._scores(mean, target, pixel, std=std_native * abs(slope))
    row["seconds"] = seconds
    row["coverage95_calibrated"] = _calibrated_coverage(info, std_native, np.abs(mean - target), slope)
    rows = {name: row}
    if regression_row:
        base = reconstruct_base(model, info, image, device=args.device,
                                **{k: v for k, v in optics.items() if k != "na"})  # the base needs no NA
        if base is not None:
            rows[REGRESSION] = unseen._scores(to_unit(base)[0], target, pixel)
    return rows


def regression_record(folder: Path) -> dict:
    """The JSON record of a regression folder (qpi_regression.py's layout); exits with one line if it is not one."""
    try:
        record = json.loads((folder / "regression.json").read_text())
        int(record["steps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"report: {folder} holds no regression made by benchmarks/qpi_regression.py "
                 f"(regression.json: {exc.__class__.__name__}: {exc})")
    return record


def qpi_regression(folder: Path | None, args):
    """The trained QPI regression network of ``folder`` (qpi_regression.py's layout), or None."""
    if folder is None:
        return None
    import qpi_regression
    from safetensors.torch import load_file

    record = regression_record(folder)
    if record["steps"] < record.get("planned_steps", record["steps"]):
        sys.exit(f"report: the regression in {folder} has {record['steps']} of its {record['planned_steps']} steps; "
                 "finish it (qpi_regression.py --resume) before scoring it as the same budget")
    # its base and budget are those of the residual model it was trained over: the one this run scores
    residual = args.models / MODELS["qpi"]["cvdm-qpi-residual"]
    if record.get("model_sha256") != file_digest(residual):
        sys.exit(f"report: the regression in {folder} was trained over another {residual.name} than {residual}; "
                 "train one over this model (qpi_regression.py --model)")
    weights = folder / "regression.safetensors"
    model, info = load_model(residual)
    net = qpi_regression._network(model, bool(record.get("noise_map", False)))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return SimpleNamespace(net=net, model=model, info=info, noise_map=bool(record.get("noise_map", False)),
                           record=record, weights=file_digest(weights)[:16])


# ----------------------------------------------------------------------------- one image


def classical_rows(test_set: TestSet, item, tuned, regression, names: list[str]) -> dict:
    """The rows of the baselines ``names`` (classical methods and the regression) on one image."""
    if test_set.task == "qpi":
        stack, phase = item
        config = QPISimulationConfig()
        optics = (config.dz_um, config.wavelength_um, config.pixel_um)
        target = metrics.to_unit_range(phase)
        methods = {"US-TIE": lambda: us_tie(stack, *optics, tuned["us_tie"]),
                   "FFT-TIE": lambda: fft_tie(stack, *optics, *tuned["fft_tie"]),
                   waveorder_qpi.NAME: lambda: waveorder_qpi.phase(stack, *optics, **tuned[waveorder_qpi.NAME]),
                   REGRESSION: lambda: qpi_regression_phase(regression, stack)}
        rows = {name: unseen._scores(unseen._phase_to_unit(methods[name](), phase)[0], target, config.pixel_um)
                for name in names}
        if REGRESSION in rows:
            rows[REGRESSION]["weights"] = regression.weights  # which network a row scored
        return rows
    sample = item
    target = metrics.to_unit_range(sample.target)
    pixel = 1000 * sample.target_pixel_um
    methods = {
        "Richardson–Lucy": lambda: richardson_lucy_widefield(
            sample.widefield, sample.camera_pixel_um, sample.na, sample.wavelength_um,
            iterations=unseen.RL_ITERATIONS, offset=sample.offset_adu),
        "bicubic": lambda: upsample(sample.widefield.astype(np.float32)[None], 2)[0],
    }
    return {name: unseen._scores(metrics.scale_to_reference(methods[name](), target), target, pixel)
            for name in names}


def qpi_regression_phase(regression, stack: np.ndarray) -> np.ndarray:
    import qpi_regression
    return qpi_regression.regression_phase(regression.net, regression.model, regression.info, stack,
                                           regression.noise_map)


def model_image_rows(test_set: TestSet, item, name, model, info, args, first: bool) -> dict:
    if test_set.task == "qpi":
        stack, phase = item
        target = metrics.to_unit_range(phase)

        def to_unit(estimate, phase=phase):
            return unseen._phase_to_unit(estimate, phase)

        return model_rows(name, model, info, stack, target, QPISimulationConfig().pixel_um, to_unit, args, False)
    sample = item
    target = metrics.to_unit_range(sample.target)

    def to_unit(estimate, target=target):
        slope = np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]
        return metrics.scale_to_reference(estimate, target), slope

    return model_rows(name, model, info, sample.widefield, target, 1000 * sample.target_pixel_um, to_unit, args,
                      first, input_pixel_size_um=sample.camera_pixel_um, wavelength_um=sample.wavelength_um,
                      na=sample.na)


def classical_missing(test_set: TestSet, index: int, store: "Store", tuned, regression) -> list[str]:
    """The baselines of this image not in the store: classical methods, and the given regression
    network (a row of another network counts as missing)."""
    names = [n for n in CLASSICAL[test_set.task] if n != waveorder_qpi.NAME or (tuned and n in tuned)]
    missing = [n for n in names if not store.has(test_set.key, index, n)]
    if regression is not None and \
            store.rows.get((test_set.key, index, REGRESSION), {}).get("weights") != regression.weights:
        missing.append(REGRESSION)
    return missing


# ----------------------------------------------------------------------------- the run


class Store:
    """Rows appended as JSON lines ``{"set", "index", "method", "row"}``; a torn last line is ignored."""

    def __init__(self, path: Path, header: dict, device: str = "", create: bool = True):
        self.path = path
        self.header, self.device, self.devices = header, device, set()
        self.rows: dict[tuple[str, int, str], dict] = {}
        if path.is_file():
            lines = path.read_text().splitlines()
            first = json.loads(lines[0]) if lines else {}
            if first.get("header") != header:
                sys.exit(f"report: {path} was made with other settings ({first.get('header')}); "
                         "remove it or pass another --out")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.rows[(entry["set"], entry["index"], entry["method"])] = entry["row"]
                self.devices.add(entry.get("device", "unknown"))
        elif create:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": header}) + "\n")

    def has(self, key: str, index: int, method: str) -> bool:
        return (key, index, method) in self.rows

    def add(self, key: str, index: int, rows: dict) -> None:
        with self.path.open("a") as handle:
            for method, row in rows.items():
                self.rows[(key, index, method)] = row
                handle.write(json.dumps({"set": key, "index": index, "method": method, "row": row,
                                         "device": self.device}, default=float) + "\n")
        self.devices.add(self.device)

    def method_rows(self, key: str, method: str, count: int) -> list[dict]:
        return [self.rows[(key, i, method)] for i in range(count) if (key, i, method) in self.rows]


def run_task(args, store: Store) -> list[TestSet]:
    sets = test_sets(args)
    files = None
    tuned = {}
    if args.task == "qpi":
        if not args.source_images.is_dir():
            sys.exit(f"report: QPI needs the photo folder {args.source_images} (BSD100, Urban100 and Sun-Hays80 "
                     "as grayscale images, see docs/data.md); pass --source-images DIR, or run --only sr")
        split = split_source_files(args.source_images)
        files = split["test"]
        config = QPISimulationConfig()
        optics = (config.dz_um, config.wavelength_um, config.pixel_um)
        tune_args = SimpleNamespace(size=args.size, tune_images=args.tune_images, seed=args.seed,
                                    tuning=args.out / "qpi-tie-tuning.json")
        for noise in args.noise:
            tuned[noise] = unseen.tune_tie(tune_args, split["validation"], noise, optics)
            if waveorder_qpi.available():
                tuned[noise][waveorder_qpi.NAME] = waveorder_qpi.tuned(
                    args.out / "qpi-waveorder-tuning.json", f"{noise:g}/{args.size}/{args.tune_images}",
                    lambda noise=noise: unseen.validation_pairs(tune_args, split["validation"], noise), optics)
            print(f"TIE tuned on {args.tune_images} validation photos at noise {noise:g}: FFT-TIE a = "
                  f"{tuned[noise]['fft_tie'][0]:.2g} µm⁻⁴ ({tuned[noise]['fft_tie'][1]}), US-TIE a = "
                  f"{tuned[noise]['us_tie']:.2g} µm⁻⁴", flush=True)
    regression = qpi_regression(args.regression, args) if args.task == "qpi" else None
    streams = {s.key: ImageStream(s, args, files) for s in sets}
    models = MODELS[args.task]
    for position, (name, filename) in enumerate(models.items()):
        if name in args.skip_model:
            continue
        model, info = load_model(args.models / filename)
        first = position == 0
        # the headline size first, so that a stopped run has the most images where the README looks
        groups = [[s for s in sets if s.size == size] for size in sorted({s.size for s in sets})]
        for group in groups:
            for index, s in ((i, s) for i in range(max(s.count for s in group)) for s in group):
                if index >= s.count:
                    continue
                need_model = not store.has(s.key, index, name)
                need_classical = classical_missing(s, index, store, tuned.get(s.noise), regression) if first else []
                if not (need_model or need_classical):
                    continue
                start = time.perf_counter()
                item = streams[s.key][index]
                rows = {}
                if need_classical:
                    rows.update(classical_rows(s, item, tuned.get(s.noise), regression, need_classical))
                if need_model:
                    rows.update(model_image_rows(s, item, name, model, info, args, first))
                store.add(s.key, index, rows)
                done = f"MS-SSIM {rows[name]['ms_ssim']:.4f}" if need_model else "baselines"
                print(f"{args.task} {s.key} image {index + 1}/{s.count} {name}: {done} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    return sets


# ----------------------------------------------------------------------------- tables


def methods_of(task: str, regression_given: bool) -> list[str]:
    return list(MODELS[task]) + list(CLASSICAL[task]) + [REGRESSION]


def set_table(task: str, test_set: TestSet, store: Store, regression_given: bool) -> list[str]:
    lines = ["| method | n | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for method in methods_of(task, regression_given):
        rows = store.method_rows(test_set.key, method, test_set.count)
        if not rows:
            if method == REGRESSION and task == "qpi" and not regression_given:
                lines.append(f"| {method} | 0 | {NOT_RUN_QPI} |" + " |" * (len(COLUMNS) - 1))
            elif method == waveorder_qpi.NAME and not waveorder_qpi.available():
                lines.append(f"| {method} | 0 | {waveorder_qpi.NOT_RUN} |" + " |" * (len(COLUMNS) - 1))
            else:
                lines.append(f"| {method} | 0 | not run yet |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [cell([r.get(key) for r in rows], digits) if any(r.get(key) is not None for r in rows) else ""
                 for key, _, digits in COLUMNS]
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    return lines


def headline_sets(sets: list[TestSet]) -> list[TestSet]:
    """The sets of the smallest image size: those the README's headline pools."""
    return [s for s in sets if s.size == min(t.size for t in sets)] if sets else []


def best_classical(task: str, sets: list[TestSet], store: Store) -> str | None:
    best, best_mean = None, -math.inf
    for method in CLASSICAL[task]:
        values = [r["ms_ssim"] for s in sets for r in store.method_rows(s.key, method, s.count)]
        if values and np.mean(values) > best_mean:
            best, best_mean = method, float(np.mean(values))
    return best


def pooled(method: str, sets: list[TestSet], store: Store, paired_with: str | None = None) -> list[float]:
    """MS-SSIM of ``method`` over the sets' images (with ``paired_with``: only images both have)."""
    values = []
    for s in sets:
        for i in range(s.count):
            if store.has(s.key, i, method) and (paired_with is None or store.has(s.key, i, paired_with)):
                values.append(store.rows[(s.key, i, method)]["ms_ssim"])
    return values


def headline_rows(task: str, sets: list[TestSet], store: Store, prefix: str = "") -> list[str]:
    """One row per model: MS-SSIM over the test images of the smallest size of every set, beside
    the best tuned classical method on the same images."""
    cells_sets = headline_sets(sets)
    reference = best_classical(task, cells_sets, store)
    described = {"qpi": ("defocus stack ±1 µm → phase (rad)", "0.21 µm → 0.21 µm"),
                 "sr": ("widefield → SIM-like (×2)", "62.6 nm → 31.3 nm")}[task]
    where = {"qpi": "QPI, noise 0–0.1", "sr": "SR, six structures"}[task]
    lines = []
    for name in MODELS[task]:
        values = pooled(name, cells_sets, store)
        if not values:
            score = "not run yet"
        else:
            score = f"{cell(values, 3)} (n = {len(values)}, {where})"
            if reference:
                score += f"; {reference} {cell(pooled(reference, cells_sets, store, paired_with=name), 3)}"
        lines.append(f"| [`{name}`]({prefix}models/{name}.md) | {described[0]} | {described[1]} | {score} |")
    return lines


def paired_rows(task: str, sets: list[TestSet], store: Store) -> list[str]:
    """Each model minus the best tuned classical method and minus the regression baseline, image by
    image over the headline sets: the paired difference in MS-SSIM and on how many images it is ahead."""
    cells_sets = headline_sets(sets)
    lines = ["| model | minus | n | paired difference in MS-SSIM [95 % interval] | model ahead on |",
             "|---|---|---|---|---|"]
    others = [m for m in (best_classical(task, cells_sets, store), REGRESSION) if m]
    for name in MODELS[task]:
        for other in others:
            pairs = [(store.rows[(s.key, i, name)]["ms_ssim"], store.rows[(s.key, i, other)]["ms_ssim"])
                     for s in cells_sets for i in range(s.count)
                     if store.has(s.key, i, name) and store.has(s.key, i, other)]
            if pairs:
                differences = [a - b for a, b in pairs]
                ahead = sum(d > 0 for d in differences)
                lines.append(f"| {name} | {other} | {len(pairs)} | {cell(differences, 4)} | {ahead} of {len(pairs)} |")
    return lines


def card_table(task: str, name: str, sets: list[TestSet], store: Store) -> str:
    """The model card's table: this model on every set beside the best tuned classical method and the
    regression baseline there, on the same images."""
    lines = [f"`python benchmarks/report.py --only {task}`; cells: mean over images [95 % interval]; n: images.\n",
             "| test set | n | MS-SSIM | MAE | PSNR (dB) | coverage ±1.96 std | coverage calibrated 95 % | "
             f"best tuned classical: MS-SSIM | {REGRESSION}: MS-SSIM | s / image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sets:
        rows = store.method_rows(s.key, name, s.count)
        if not rows:
            lines.append(f"| {s.key} | 0 | not run yet |" + " |" * 7)
            continue
        reference = best_classical(task, [s], store)
        ref = f"{reference} {cell(pooled(reference, [s], store, paired_with=name), 3)}" if reference else ""
        regression = pooled(REGRESSION, [s], store, paired_with=name)
        values = [cell([r.get(key) for r in rows], digits) if any(r.get(key) is not None for r in rows) else "–"
                  for key, _, digits in COLUMNS]
        lines.append(f"| {s.key} | {len(rows)} | " + " | ".join(values[:5]) +
                     f" | {ref} | {cell(regression, 3) if regression else 'not run'} | {values[5]} |")
    return "\n".join(lines) + "\n"


def sampler_line(task: str, models: Path) -> str:
    """Each model's default sampler as its metadata gives it (the settings the report ran with)."""
    parts = []
    for name, filename in MODELS[task].items():
        path = models / filename
        if not path.is_file():
            continue
        sampler = read_model_info(path).sampler
        zeta = sampler.get("consistency_strength", 0.0)
        step = f", data-consistency step ζ = {zeta:g}" if zeta else ", no data-consistency step"
        title = SAMPLER_TYPES[sampler.get("name", DEFAULT_SAMPLER)].title
        parts.append(f"`{name}`: {title}, {sampler.get('steps', DEFAULT_STEPS)} steps{step}")
    return "Samplers (each model's defaults): " + "; ".join(parts) + ".\n"


def regression_words(folder: Path | None) -> str:
    """Which QPI regression network the rows are of, and its training budget."""
    if folder is None:
        return NOT_RUN_QPI
    record = regression_record(folder)
    inputs = "[I(−dz), I(+dz), b_TIE, ν]" if record.get("noise_map") else "[I(−dz), I(+dz), b_TIE]"
    where = folder.resolve().relative_to(ROOT) if folder.resolve().is_relative_to(ROOT) else folder
    return (f"`{where}`, a U-Net trained with an L2 loss on the residual from {inputs}, "
            f"{record['steps']} steps on {record.get('simulated_images', 'an unrecorded number of')} simulated pairs.")


def report_text(task: str, sets: list[TestSet], store: Store, args) -> str:
    out = [f"## {task.upper()}: unseen test sets\n",
           f"`python benchmarks/report.py --only {task}`; N = {args.samples} samples; device: "
           f"{', '.join(sorted(store.devices)) or 'none yet'}. Cells: mean over images [95 % interval]; n: images.\n",
           sampler_line(task, args.models)]
    if task == "qpi":
        out.append("Regression baseline: " + regression_words(args.regression) + "\n")
    else:
        out.append(f"Regression baseline: `{REGRESSION}` is the residual model's direct predictor, trained "
                   "jointly with it (the same data and steps).\n")
    for s in sets:
        out.append(f"### {task.upper()} {s.key} ({s.count} images planned)\n")
        out.append("\n".join(set_table(task, s, store, args.regression is not None)) + "\n")
    size = min((s.size for s in sets), default=HEADLINE_SIZE)
    out.append(f"### {task.upper()} headline: MS-SSIM over all {size}² test images\n")
    out.append(HEADLINE_HEADER + "\n|---|---|---|---|")
    out.append("\n".join(headline_rows(task, sets, store, prefix="../")) + "\n")
    out.append(f"### {task.upper()}: paired differences over all {size}² test images\n")
    out.append("\n".join(paired_rows(task, sets, store)) + "\n")
    return "\n".join(out)


def replace_block(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- report:name -->`` and ``<!-- /report:name -->`` in ``path``."""
    begin, end = f"<!-- report:{name} -->", f"<!-- /report:{name} -->"
    content = path.read_text()
    if begin not in content or end not in content:
        sys.exit(f"report: {path} has no {begin} … {end} block")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("qpi", "sr"), help="run one half (default: both)")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "report", help="rows and report.md")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="folder of the shipped models")
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images",
                        help="QPI: the folder of photos split by file (docs/data.md)")
    parser.add_argument("--regression", type=Path, metavar="FOLDER",
                        help="QPI regression baseline (benchmarks/qpi_regression.py --out FOLDER; "
                             "default: the shipped benchmarks/baselines/qpi-regression)")
    parser.add_argument("--no-regression", action="store_true", help="QPI: leave the regression row out")
    parser.add_argument("--images", type=int, default=24, help="QPI 256² images per noise level")
    parser.add_argument("--large-images", type=int, default=8, help="QPI 512² images per noise level")
    parser.add_argument("--sr-images", type=int, default=24, help="SR images per structure")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    parser.add_argument("--size", type=int, default=HEADLINE_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--large-size", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--sr-size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--tune-images", type=int, default=4, help="validation photos the TIE regularisers are tuned on")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--skip-model", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the rows made so far")
    parser.add_argument("--write-docs", action="store_true",
                        help="put the tables into README.md, docs/results.md and the cards (between report: markers); "
                             "with --only, that half's")
    args = parser.parse_args(argv)
    if args.no_regression:
        args.regression = None
    elif args.regression is None and SHIPPED_REGRESSION.is_dir():
        args.regression = SHIPPED_REGRESSION
    if args.regression is not None:
        regression_record(args.regression)  # a wrong folder stops here, before any work
    torch.set_num_threads(args.threads)
    device = device_name(args.device)
    for task in ((args.only,) if args.only else ("qpi", "sr")):
        args.task = task
        store = Store(args.out / f"{task}.jsonl", store_header(task, args), device)
        print(f"# {task.upper()} on {device}, torch {torch.__version__}; rows in {store.path}", flush=True)
        start = time.perf_counter()
        sets = test_sets(args) if args.tables_only else run_task(args, store)
        if not args.tables_only:
            print(f"{task}: this run took {time.perf_counter() - start:.0f} s", flush=True)
        text = report_text(task, sets, store, args)
        (args.out / f"report-{task}.md").write_text(text)
        print("\n" + text, flush=True)
    if args.write_docs:
        write_docs(args, device, tasks=(args.only,) if args.only else ("qpi", "sr"))


def store_header(task: str, args) -> dict:
    """What the rows depend on: a store made with other settings or other model files (their
    weights or their default sampler, data-consistency strength, calibration) is not resumed."""
    models = {name: file_digest(args.models / filename)[:16]
              for name, filename in MODELS[task].items() if (args.models / filename).is_file()}
    return {"task": task, "seed": args.seed, "samples": args.samples,
            "sizes": [args.size, args.large_size, args.sr_size], "models": models}


def write_docs(args, device: str, readme: Path = ROOT / "README.md", results: Path = ROOT / "docs" / "results.md",
               cards: Path = ROOT / "models", tasks: tuple[str, ...] = ("qpi", "sr")):
    """The README's model table, docs/results.md's tables and each model card's table from the rows
    made so far, for ``tasks``; the README rows of a half not in ``tasks`` are kept as they are."""
    rows = []
    for task in ("qpi", "sr"):
        if task not in tasks:
            rows += [line for line in readme.read_text().splitlines()
                     if any(line.startswith(f"| [`{name}`]") for name in MODELS[task])]
            continue
        args.task = task
        store = Store(args.out / f"{task}.jsonl", store_header(task, args), device, create=False)
        sets = test_sets(args)
        replace_block(results, task, report_text(task, sets, store, args))
        for name in MODELS[task]:
            card = cards / f"{name}.md"
            if card.is_file() and "<!-- report:card -->" in card.read_text():
                replace_block(card, "card", card_table(task, name, sets, store))
        rows += headline_rows(task, sets, store)
    replace_block(readme, "models", "\n".join([HEADLINE_HEADER, "|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
