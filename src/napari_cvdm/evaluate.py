"""Score models and the classical baselines on a dataset (``cvdm evaluate``).

Every method's prediction is compared with the target on the target grid:

- QPI: phase in radians with the free offset removed (:func:`metrics.align_offset`);
  baselines FFT-TIE and US-TIE (:mod:`napari_cvdm.physics.tie`).
- SR: every prediction is fitted to the target by least squares (``a·p + b``,
  :func:`metrics.scale_to_reference`) because the methods work in different
  intensity units; baselines are the upsampled widefield image and Richardson–Lucy
  deconvolution (:mod:`napari_cvdm.physics.deconvolution`). Also reports the
  decorrelation resolution of the (unscaled) prediction in nm.

Metrics: PSNR and SSIM/MS-SSIM with the target's data range, MAE on [0, 1]-scaled
images; for models (N ≥ 2 samples) also the uncertainty metrics of
:func:`napari_cvdm.uncertainty.metrics.uncertainty_report` on the std (scaled like the
mean): coverage of mean ± z·std at 80, 90 and 95 %, UCE, ENCE, AUSE and the Spearman
correlation of std and |error|. Two more rows per model carry only those:

- ``"<model>, calibrated"`` (when the model file has a calibration): the calibrated std
  of each level for its coverage, the 95 % one for the other metrics;
- ``"<model>, self-consistency"`` (N ≥ 3): one of the model's own samples stands in for
  the target (:func:`~napari_cvdm.uncertainty.metrics.self_consistency_report`), the
  ceiling a perfectly calibrated sampler with N − 1 samples would reach.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .physics.optics import QPI_DZ_UM, QPI_WAVELENGTH_UM, SR_EMISSION_UM, SR_NA
from .engine import ReconstructionSettings

FIDELITY = ("psnr", "ssim", "ms_ssim", "mae")
UNCERTAINTY = ("coverage_80", "coverage_90", "coverage_95", "uce", "ence", "ause", "spearman_std_error")
CALIBRATED_SUFFIX = ", calibrated"
CEILING_SUFFIX = ", self-consistency"


@dataclass
class EvaluationOptions:
    """Models and data to evaluate; optics for the classical baselines (µm, ADU)."""

    models: list[Path] = field(default_factory=list)
    baselines: bool = True
    settings: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    task: str | None = None
    input_dir: str | None = None
    target_dir: str | None = None
    simulate: str | None = None
    # Simulated test data: "unseen" = outside the training data (QPI: photos of the test
    # split of source_images; SR: SR_UNSEEN_TEST), "seen" = the training distribution's test stream.
    test_set: str = "unseen"
    source_images: str | None = None
    images: int = 8
    size: int = 128
    seed: int = 0
    na: float = SR_NA
    wavelength_um: float = SR_EMISSION_UM
    offset: float = 100.0
    dz_um: float = QPI_DZ_UM
    qpi_wavelength_um: float = QPI_WAVELENGTH_UM
    pixel_size_um: float | None = None


@dataclass
class EvaluationTable:
    """Per-image rows ``{"method", "image", metric: value}`` and the metric names in order."""

    task: str
    rows: list[dict]
    metrics: list[str]
    data: str = ""  # simulated data: one line saying which test set (unseen or not); written above the table

    def summary(self) -> list[dict]:
        """Mean of every metric per method (in order of first appearance)."""
        methods = list(dict.fromkeys(row["method"] for row in self.rows))
        out = []
        for method in methods:
            rows = [row for row in self.rows if row["method"] == method]
            entry = {"method": method, "images": len(rows)}
            for name in self.metrics:
                values = [row[name] for row in rows if row.get(name) is not None and np.isfinite(row[name])]
                entry[name] = float(np.mean(values)) if values else None
            out.append(entry)
        return out


def _task_of(options: EvaluationOptions, infos: list) -> str:
    tasks = {info.task for info in infos}
    if len(tasks) > 1:
        raise InputError(f"The models are for different tasks ({', '.join(sorted(tasks))}); evaluate them separately.")
    task = options.task or options.simulate or (tasks.pop() if tasks else None)
    if task not in ("sr", "qpi"):
        raise InputError("Say which task to evaluate: give a model, --task sr|qpi, or --simulate sr|qpi.")
    for info, path in zip(infos, options.models):
        if info.task != task:
            raise InputError(f"{path.name} is a {info.task} model, but the data are {task} pairs.")
    return task


def _simulated_test_pairs(options: EvaluationOptions, task: str) -> tuple[list, str]:
    """``(pairs, one line saying what they are)`` of the simulated test set chosen by ``options``."""
    from .data import SR_UNSEEN_TEST, SimulatedPairs

    if options.test_set not in ("unseen", "seen"):
        raise InputError(f"test set must be 'unseen' or 'seen', got {options.test_set!r}.")
    if options.source_images and task != "qpi":
        raise InputError("--source-images are QPI phase objects; the SR test set renders its own structures.")
    unseen = options.test_set == "unseen"
    try:
        if task == "sr" and unseen:
            stream = SimulatedPairs("sr", options.size, options.seed, "test", sr_config=SR_UNSEEN_TEST,
                                    balanced_kinds=True)  # fmt: skip
            data = ("unseen SR test set: SR_UNSEEN_TEST (NA, wavelength, SNR and structure densities, widths and "
                    "curvature outside the training ranges; held-out families nucleus and mitochondria)")
        elif task == "qpi" and options.source_images:
            file_split = "test" if unseen else "train"
            stream = SimulatedPairs("qpi", options.size, options.seed, "test", source_dir=options.source_images,
                                    source_split=file_split)  # fmt: skip
            data = (f"unseen QPI test set: phase objects from the {len(stream.source_files)} test-split photos of "
                    f"{options.source_images} (split by file: no training or validation crop came from them)"
                    if unseen else f"QPI test stream of the training distribution (NOT unseen: new crops of the "
                    f"{len(stream.source_files)} training-split photos of {options.source_images}, and textures)")
        else:
            stream = SimulatedPairs(task, options.size, options.seed, "test")
            data = (f"{task.upper()} test stream of the training distribution (NOT unseen: "
                    + ("other crops of the bundled scikit-image photos the training crops come from; "
                       "give --source-images DIR for an unseen test)" if task == "qpi" else "SR_TRAIN settings)"))
        return stream.take(options.images), data
    except ValueError as error:
        raise InputError(str(error)) from error


def _load_pairs(options: EvaluationOptions, task: str):
    """``(pairs, raw input pixel size µm or None, description)``; pairs have inputs on the target grid."""
    from .data import QPISimulationConfig, SRSimulationConfig, load_pair_folders
    from .data.training import folder_pixel_size as _folder_pixel_size

    if options.input_dir or options.target_dir:
        if not (options.input_dir and options.target_dir):
            raise InputError("Give both --input-dir and --target-dir.")
        pairs = load_pair_folders(options.input_dir, options.target_dir, task)
        pixel = options.pixel_size_um or _folder_pixel_size(Path(options.input_dir), Path(options.target_dir),
                                                             2 if task == "sr" else 1)
        return pairs, pixel, ""  # the user's own folders: nothing to warn about
    if options.simulate is None:
        raise InputError("No data: give --input-dir and --target-dir, or --simulate sr|qpi.")
    if options.images < 1:
        raise InputError(f"--images must be at least 1 (got {options.images}).")
    pairs, data = _simulated_test_pairs(options, task)
    default = SRSimulationConfig().target_pixel_um * 2 if task == "sr" else QPISimulationConfig().pixel_um
    return pairs, options.pixel_size_um or default, data


def _uncertainty(mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict:
    """:func:`uncertainty.metrics.uncertainty_report`, its Spearman keyed ``spearman_std_error``."""
    from .uncertainty.metrics import uncertainty_report

    report = uncertainty_report(mean, std, target)
    report["spearman_std_error"] = report.pop("spearman")
    return report


def _alignment(prediction: np.ndarray, target: np.ndarray, task: str) -> tuple[np.ndarray, float]:
    """The prediction in the target's units and the factor that takes a std there (1 for QPI)."""
    from . import metrics

    if task == "qpi":
        return metrics.align_offset(prediction, target), 1.0
    aligned = metrics.scale_to_reference(prediction, target)
    spread = float(np.std(prediction))
    return aligned, float(np.std(aligned)) / spread if spread > 0 else 1.0


def _scores(prediction: np.ndarray, target: np.ndarray, task: str, std: np.ndarray | None,
            target_pixel_nm: float | None) -> dict:
    from . import metrics

    aligned, scale = _alignment(prediction, target, task)
    row = {
        "psnr": metrics.psnr(aligned, target),
        "ssim": metrics.ssim(aligned, target),
        "ms_ssim": metrics.ms_ssim(aligned, target),
        "mae": metrics.mae(aligned, target),
    }
    if task == "sr" and target_pixel_nm is not None:
        row["resolution_nm"] = metrics.decorrelation_resolution(prediction, target_pixel_nm)
    if std is not None and std.any():
        row.update(_uncertainty(aligned, std * scale, target))
    return row


def _calibrated_scores(prediction, std, target, task: str, calibration) -> dict:
    """Uncertainty metrics of the calibrated std (model units, then scaled like the mean)."""
    from .uncertainty.apply import calibrated_std

    aligned, scale = _alignment(prediction, target, task)
    by_level = {level: calibrated_std(std, calibration, level) * scale for level in calibration.levels}
    row = _uncertainty(aligned, calibrated_std(std, calibration) * scale, target)
    main = by_level[0.95] if 0.95 in by_level else by_level[calibration.levels[-1]]
    for name in ("coverage_80", "coverage_90", "coverage_95"):
        level = int(name[-2:]) / 100
        row[name] = _uncertainty_coverage(aligned, by_level.get(level, main), target, level)
    return row


def _uncertainty_coverage(mean, std, target, level: float) -> float:
    from .uncertainty.metrics import coverage

    return coverage(mean, std, target, (level,))[level]


def _ceiling_scores(prediction, samples: np.ndarray, target, task: str) -> dict:
    """The self-consistency ceiling of ``samples`` ``(N, H, W)`` (model units; scaled like the mean)."""
    from .uncertainty.metrics import self_consistency_report

    _, scale = _alignment(prediction, target, task)
    report = self_consistency_report(samples.astype(np.float64) * scale)
    report["spearman_std_error"] = report.pop("spearman")
    return report


def _baselines(task: str, options: EvaluationOptions, pixel_um: float | None) -> dict[str, Callable]:
    from .physics import fft_tie, richardson_lucy, us_tie, widefield_transfer

    if task == "qpi":
        pixel = pixel_um or 0.21

        def tie(solver):
            return lambda pair: solver(pair.input, options.dz_um, options.qpi_wavelength_um, pixel)

        return {"FFT-TIE": tie(fft_tie), "US-TIE": tie(us_tie)}
    fine_pixel = (pixel_um or 0.0626) / 2

    def deconvolve(pair):
        fine = np.clip(pair.input[0].astype(np.float64) - options.offset, 0.0, None)
        transfer = widefield_transfer(fine.shape, fine_pixel, options.na, options.wavelength_um, 2)
        return richardson_lucy(fine, transfer, iterations=30)

    return {"widefield (upsampled)": lambda pair: pair.input[0], "Richardson-Lucy": deconvolve}


@dataclass
class _ModelOutput:
    """One model's reconstruction of a pair (model units): mean and std ``(H, W)``, samples ``(N, H, W)``."""

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray
    calibration: object | None  # calibration.Calibration


def _model_method(path: Path, device, settings: ReconstructionSettings) -> Callable:
    from .uncertainty.apply import model_calibration
    from .checkpoint import load_model
    from .engine import reconstruct
    from .physics.optics import downsample

    model, info = load_model(path, device)
    try:
        calibration = model_calibration(info)
    except ValueError as error:
        raise InputError(f"{path.name}: its calibration is unreadable ({error}); run cvdm calibrate again.") from None
    keeping = dataclasses.replace(settings, keep_samples=settings.n_samples >= 3)  # for the ceiling

    def run_model(pair) -> _ModelOutput:  # from the raw grid the pair's input was upsampled from, as a user's
        result = reconstruct(model, info, downsample(pair.input, int(info.upsampling_factor)).astype(np.float32),
                             keeping)
        mean = np.squeeze(result.mean).astype(np.float64)
        samples = None if result.samples is None else result.samples.reshape(-1, *mean.shape)
        return _ModelOutput(mean, np.sqrt(np.squeeze(result.variance).astype(np.float64)), samples, calibration)

    return run_model


def _rows(name: str, image: str, output, target: np.ndarray, task: str, target_pixel_nm) -> list[dict]:
    """The rows of one method on one image: a model adds its calibrated and self-consistency rows."""
    if not isinstance(output, _ModelOutput):
        return [{"method": name, "image": image, **_scores(np.asarray(output, np.float64), target, task, None,
                                                           target_pixel_nm)}]
    rows = [{"method": name, "image": image, **_scores(output.mean, target, task, output.std, target_pixel_nm)}]
    if not output.std.any():  # one sample: no variance to score
        return rows
    if output.calibration is not None:
        rows.append({"method": name + CALIBRATED_SUFFIX, "image": image,
                     **_calibrated_scores(output.mean, output.std, target, task, output.calibration)})
    if output.samples is not None:
        rows.append({"method": name + CEILING_SUFFIX, "image": image,
                     **_ceiling_scores(output.mean, output.samples, target, task)})
    return rows


def evaluate(options: EvaluationOptions, progress: Callable[[str], None] | None = None) -> EvaluationTable:
    """Evaluate ``options.models`` (and the baselines) on the options' dataset."""
    from .checkpoint import read_model_info
    from .engine import resolve_device

    options.settings.check()
    infos = [read_model_info(path) for path in options.models]
    task = _task_of(options, infos)
    pairs, pixel_um, data = _load_pairs(options, task)
    target_pixel_nm = None if pixel_um is None else pixel_um * 1000 / (2 if task == "sr" else 1)
    device = resolve_device(options.settings.device)
    methods: dict[str, Callable] = {path.stem: _model_method(path, device, options.settings)
                                    for path in options.models}
    if options.baselines:
        methods.update(_baselines(task, options, pixel_um))
    if not methods:
        raise InputError("Nothing to evaluate: give --model, or keep the baselines.")
    rows = []
    for i, pair in enumerate(pairs, 1):
        target = pair.target[0].astype(np.float64)
        for name, method in methods.items():
            if progress is not None:
                progress(f"image {i}/{len(pairs)}: {name}")
            rows += _rows(name, pair.name, method(pair), target, task, target_pixel_nm)
    names = list(FIDELITY) + (["resolution_nm"] if task == "sr" and target_pixel_nm else [])
    if options.models:
        names += list(UNCERTAINTY)
    return EvaluationTable(task, rows, names, data)


def _format(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def write_tables(table: EvaluationTable, out_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``metrics.md`` (means), ``metrics.csv`` (means) and ``metrics_per_image.csv``."""
    from .checkpoint import write_atomically

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = table.summary()
    header = ["method", "images", *table.metrics]
    lines = [f"Test data: {table.data}", ""] if table.data else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        cells = [entry["method"], str(entry["images"])] + [_format(entry[name]) for name in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = out_dir / "metrics.md"
    write_atomically(markdown, ("\n".join(lines) + "\n").encode())
    paths = []
    for name, rows, columns in (("metrics.csv", summary, header),
                                ("metrics_per_image.csv", table.rows, ["method", "image", *table.metrics])):
        path = out_dir / name
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return markdown, paths[0], paths[1]
