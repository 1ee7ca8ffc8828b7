"""Calibrate a model on held-out pairs, and apply a stored calibration to a reconstruction.

:func:`calibrate_model` reconstructs each pair's input with
:func:`napari_cvdm.reconstruct.reconstruct` and fits
:func:`napari_cvdm.calibration.fit_calibration` on (mean, std, target) in the output's units
(QPI: radians, the free phase offset removed; SR: the target mapped onto the mean, see :func:`_aligned`);
the result goes into the model file as ``ModelInfo.calibration`` (:func:`with_calibration`).
:func:`uncertainty_outputs` turns a reconstruction's variance into the calibrated std and
the "± error at 95 %" bound, with the out-of-distribution sentence and the small-N note.
:func:`refit_base` refits a QPI model's TIE regulariser on the same kind of pairs, before calibrating.
:func:`consistency_output`: the data-consistency map of a reconstruction against its input.
No Qt here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import (
    Calibration,
    calibrated_std,
    check_in_distribution,
    error_bound,
    fit_calibration,
    sample_variance_note,
    summarize_distribution,
    variance_relative_error,
)
from .residual import FIT_IMAGES, TIEBase, tie_of
from .checkpoint import ModelInfo
from .errors import InputError

#: The level of the "± error" output (layer, TIFF).
ERROR_LEVEL = 0.95
UNCALIBRATED = "uncalibrated"
#: End of training: at most this many validation crops of at most this side (target pixels).
TRAINING_CROPS = 4
TRAINING_CROP_SIDE = 128
TRAINING_MAX_SAMPLES = 8


def _aligned(mean: np.ndarray, target: np.ndarray, info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, target)`` of one channel in the units a prediction's std has.

    QPI: the mean shifted by the free phase offset (radians stay radians). A per-image
    (intensity) target normalisation puts the output in the input's units, not the
    target's: the target is mapped onto the mean by the least-squares ``t ≈ a·m + b``
    (the fit of :mod:`napari_cvdm.evaluate`), so that the std, its floor and its bins are
    those a prediction will have.
    """
    from .metrics import align_offset

    if info.task == "qpi":
        return align_offset(mean, target), target
    if info.target_normalization and info.target_normalization.get("mode", "fixed") != "fixed":
        design = np.stack([mean.ravel(), np.ones(mean.size)], axis=1)
        (slope, offset), *_ = np.linalg.lstsq(design, target.ravel(), rcond=None)
        if abs(slope) > 1e-12:
            return mean, (target - offset) / slope
    return mean, target


def _raw_grid(info: ModelInfo, image: np.ndarray) -> np.ndarray:
    """A pair's input (on the target grid) back on the raw input grid, for the noise statistics."""
    factor = int(info.upsampling_factor)
    image = np.asarray(image, dtype=np.float64)
    return image[..., ::factor, ::factor] if factor > 1 else image


def calibrate_model(model, info: ModelInfo, pairs: Sequence, settings=None, source: str = "",
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, *,
                    input_pixel_size_um: float | None = None, bins: int = 1) -> Calibration:
    """Split-conformal calibration of ``model`` on ``pairs`` (``data.ImagePair``, input on the target grid).

    Each whole pair input is reconstructed (``settings``; N ≥ 2 samples) with
    ``upsampled=True``; ``input_pixel_size_um`` is the raw input's pixel size (None: the
    model's). ``progress(images done, total)`` after each pair; ``should_stop`` is passed to
    the reconstruction (raises :class:`~napari_cvdm.errors.Cancelled`). The caller bounds the
    count and size of the pairs: the cost is that of predicting them.
    """
    from .reconstruct import ReconstructionSettings, reconstruct

    settings = settings or ReconstructionSettings()
    if not pairs:
        raise InputError("No pairs to calibrate on: give at least one input/target pair.")
    if int(settings.n_samples) < 2:
        raise InputError(f"Calibration needs a variance: use at least 2 samples (got {settings.n_samples}).")
    means, stds, targets, inputs = [], [], [], []
    for done, pair in enumerate(pairs, 1):
        result = reconstruct(model, info, pair.input, settings, should_stop=should_stop,
                             input_pixel_size_um=input_pixel_size_um, upsampled=True)
        sampler = sampler_used(result.metadata)
        mean = np.asarray(result.mean, np.float64).reshape(pair.target.shape)
        std = np.sqrt(np.maximum(np.asarray(result.variance, np.float64), 0.0)).reshape(pair.target.shape)
        target = np.asarray(pair.target, np.float64)
        for channel in range(target.shape[0]):
            aligned_mean, aligned_target = _aligned(mean[channel], target[channel], info)
            means.append(aligned_mean)
            stds.append(std[channel])
            targets.append(aligned_target)
        inputs.append(_raw_grid(info, pair.input))
        if progress is not None:
            progress(done, len(pairs))
    try:  # a multi-channel target counts one image per channel
        calibration = fit_calibration(means, stds, targets, source=source, units=info.target_unit, bins=bins)
    except ValueError as error:  # e.g. every std zero, too few pixels for a level
        raise InputError(f"Cannot calibrate on these pairs: {error}") from None
    # the out-of-distribution summary: per image, the raw-grid input and its std (all channels)
    pixel = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    per_image = len(stds) // len(inputs)
    image_stds = [np.stack(stds[i:i + per_image]) for i in range(0, len(stds), per_image)]
    calibration.distribution = summarize_distribution(image_stds, inputs, pixel, info.task)
    calibration.sampler = sampler
    return calibration


def refit_base(info: ModelInfo, pairs: Sequence, input_pixel_size_um: float | None = None) -> tuple[ModelInfo, str]:
    """``info`` with its TIE base's regulariser refitted on ``pairs`` (:meth:`TIEBase.refit`), and a
    sentence saying what changed. For a residual QPI model with a physics base (InputError otherwise);
    QPI targets are phases in rad. Do it before calibrating: the error bars hold for the base they saw."""
    if tie_of(info) is None:
        raise InputError("Only a residual QPI model with a physics (TIE) base has a base regulariser to refit.")
    if not pairs:
        raise InputError("No pairs to refit the base on: give at least one input/target pair.")
    base = TIEBase.from_dict(info.base)
    refitted, before, after = base.refit([pair.input for pair in pairs], [pair.target for pair in pairs],
                                         input_pixel_size_um)
    count = min(len(pairs), FIT_IMAGES)
    if refitted == base:
        return info, f"the TIE base's regulariser stays: no refit on {count} pair(s) beat it (MAE {before:.4f} rad)"
    words = (f"TIE base refitted on {count} pair(s): regulariser strength {refitted.strength:.3g}, exponent "
             f"{refitted.exponent:g}, {refitted.boundary} boundary; its MAE {before:.4f} → {after:.4f} rad")
    return dataclasses.replace(info, base=refitted.to_dict()), words


def sampler_used(metadata: dict) -> dict:
    """The ``ModelInfo.sampler`` entry (name, steps, n_samples, eta, clip, grid, log_snr_range) of a
    reconstruction's metadata; for a residual model also ``shrink_refinement`` (which mean the
    errors were measured on)."""
    low, high = metadata["log_snr_range"]
    used = {"name": metadata["sampler"], "steps": int(metadata["steps"]), "n_samples": int(metadata["n_samples"]),
            "eta": float(metadata["eta"]), "clip": metadata["clip"], "grid": metadata["grid"],
            "log_snr_range": [None if low is None else float(low), float(high)]}
    if metadata.get("formulation") == "residual":
        used["shrink_refinement"] = bool(metadata.get("shrink_refinement", True))
    return used


def with_calibration(info: ModelInfo, calibration: Calibration) -> ModelInfo:
    """A copy of ``info`` that carries ``calibration``; its sampling defaults become those the
    calibration was fitted with, since the error bars hold for them (unchanged when it recorded none).
    The sample count stays the model's: it trades time for a less noisy variance, and the
    variance note says how noisy."""
    fitted = {key: value for key, value in calibration.sampler.items() if key != "n_samples"}
    sampler = {**info.sampler, **fitted}
    return dataclasses.replace(info, calibration=calibration.to_dict(), sampler=sampler)


def model_calibration(info: ModelInfo) -> Calibration | None:
    """The model's stored calibration, None when it has none; ValueError naming a damaged field."""
    if not info.calibration:
        return None
    return Calibration.from_dict(info.calibration)


def calibration_line(info: ModelInfo) -> str:
    """One line for ``cvdm info`` and the model card: the calibration's describe(), or how to get one."""
    try:
        calibration = model_calibration(info)
    except ValueError as error:
        return f"calibration unreadable ({error}); run cvdm calibrate again"
    if calibration is None:
        return f"{UNCALIBRATED}: the variance is the model's own; run cvdm calibrate on your pairs for error bars"
    return calibration.describe()


def crops(pairs: Sequence, count: int = TRAINING_CROPS, side: int = TRAINING_CROP_SIDE) -> list:
    """Up to ``count`` non-overlapping crops of at most ``side``² of ``pairs``, taken in turn from each pair."""
    from .data import ImagePair

    windows = []
    for pair in pairs:
        height, width = pair.shape
        rows, cols = min(side, height), min(side, width)
        windows.append([(pair, y, x, rows, cols) for y in range(0, height - rows + 1, rows)
                        for x in range(0, width - cols + 1, cols)])
    chosen = []
    for depth in range(max((len(w) for w in windows), default=0)):
        chosen += [w[depth] for w in windows if depth < len(w)]
    out = []
    for pair, y, x, rows, cols in chosen[:count]:
        window = (slice(None), slice(y, y + rows), slice(x, x + cols))
        out.append(ImagePair(f"{pair.name}[{y}:{y + rows}, {x}:{x + cols}]", pair.input[window], pair.target[window]))
    return out


@dataclass
class UncertaintyOutputs:
    """What a prediction says about its error bars.

    ``calibrated_std`` (the std whose square matches the squared error on the calibration
    pairs) and ``error`` (the half-width of mean ± error at ``level``) are in the output unit, shaped like the variance, None when the model is uncalibrated or N = 1.
    ``calibration``: the calibration's describe() or ``"uncalibrated"``; ``warning``: the
    out-of-distribution sentence (None when the image looks like the calibration data or
    there is nothing to compare with); ``variance_note``: how noisy the N-sample variance is;
    ``sampler_note``: a sentence when the reconstruction sampled unlike the calibration's fit.
    """

    calibrated: bool
    level: float
    calibration: str
    calibrated_std: np.ndarray | None
    error: np.ndarray | None
    warning: str | None
    variance_note: str
    variance_relative_error: float | None
    sampler_note: str | None = None

    def summary(self) -> dict:
        """JSON-safe fields for a sidecar or layer metadata."""
        return {"calibrated": self.calibrated, "level": self.level, "calibration": self.calibration,
                "out_of_distribution": self.warning, "variance_note": self.variance_note,
                "variance_relative_error": self.variance_relative_error, "sampler_note": self.sampler_note}


def uncertainty_outputs(info: ModelInfo, variance: np.ndarray, image: np.ndarray | None, n_samples: int,
                        input_pixel_size_um: float | None = None, level: float = ERROR_LEVEL,
                        sampling: dict | None = None) -> UncertaintyOutputs:
    """Calibrated std, ± error at ``level`` and the checks, for a reconstruction of ``image`` (raw input;
    None: no out-of-distribution check); ``sampling``: the reconstruction's metadata (None: not checked
    against the calibration's sampler)."""
    n_samples = int(n_samples)
    relative = variance_relative_error(n_samples) if n_samples > 1 else None
    note = sample_variance_note(n_samples)
    try:
        calibration = model_calibration(info)
    except ValueError as error:
        warning = f"The model's calibration is unreadable ({error}); the error bars are uncalibrated."
        return UncertaintyOutputs(False, level, UNCALIBRATED, None, None, warning, note, relative)
    if calibration is None or n_samples < 2:
        return UncertaintyOutputs(False, level, UNCALIBRATED if calibration is None else calibration.describe(),
                                  None, None, None, note, relative)
    std = np.sqrt(np.maximum(np.asarray(variance, np.float64), 0.0))
    pixel = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    warning = None
    if calibration.distribution is not None and image is not None:
        warning = check_in_distribution(calibration.distribution, std, image, pixel)
    return UncertaintyOutputs(
        True, level, calibration.describe(), calibrated_std(std, calibration).astype(np.float32),
        error_bound(std, calibration, level).astype(np.float32), warning, note, relative,
        calibration.sampler_mismatch(sampling) if sampling else None,
    )


# ----------------------------------------------------------------------------- data consistency

#: SR optics when nothing else is known: the middle of the training simulator's ranges (NA 1.3–1.49, λ 0.5–0.65 µm).
DEFAULT_SR_OPTICS = {"na": 1.4, "wavelength_um": 0.575, "target_cutoff_scale": 2.0}
#: A map value beyond this many noise stds counts as unexplained (0.3 % of pixels for Gaussian noise).
CONSISTENCY_THRESHOLD = 3.0


@dataclass
class ConsistencyOutput:
    """The data-consistency map (input-noise std units; None when it could not be computed) and its sidecar fields."""

    map: np.ndarray | None
    summary: dict


def _consistency_optics(info: ModelInfo, wavelength_um: float | None, dz_um: float | None) -> tuple[dict, str]:
    if info.task == "sr":
        return dict(DEFAULT_SR_OPTICS), "defaults (the middle of the SR training simulator's NA and λ ranges)"
    from .data.simulate import QPISimulationConfig

    trained = TIEBase.from_dict(info.base) if info.base else QPISimulationConfig()
    optics = {"dz_um": dz_um or trained.dz_um, "wavelength_um": wavelength_um or trained.wavelength_um}
    given = "given" if (wavelength_um or dz_um) else ("the model's" if info.base else "the simulator's defaults")
    return optics, given


def consistency_output(info: ModelInfo, mean: np.ndarray, image: np.ndarray, input_pixel_size_um: float | None,
                       wavelength_um: float | None = None, dz_um: float | None = None) -> ConsistencyOutput:
    """The forward model of ``mean`` against the raw input ``image``, in units of the input's noise std.

    SR: signed residual on the camera grid; QPI: RMS over the two planes (see
    :func:`napari_cvdm.physics.consistency.reconstruction_consistency`). About 1 where the
    mean explains the data; several units flag structure the data do not support. Never
    raises for data it cannot handle: the summary then says why there is no map.
    """
    from .physics.consistency import reconstruction_consistency

    optics, source = _consistency_optics(info, wavelength_um, dz_um)
    pixel = input_pixel_size_um or info.input_pixel_size_um
    summary = {"units": "input noise std", "optics": optics, "optics_source": source, "input_pixel_size_um": pixel,
               "map": "signed residual, camera grid" if info.task == "sr" else "RMS over the two planes"}
    if info.task not in ("sr", "qpi") or pixel is None:
        why = "no pixel size" if pixel is None else f"no forward model for a {info.task} model"
        return ConsistencyOutput(None, {**summary, "not_computed": why})
    try:
        values = reconstruction_consistency(info.task, mean, image, pixel, optics, int(info.upsampling_factor))
    except ValueError as error:
        return ConsistencyOutput(None, {**summary, "not_computed": str(error)})
    summary["rms"] = float(np.sqrt(np.mean(values**2)))
    summary[f"fraction_above_{CONSISTENCY_THRESHOLD:g}"] = float(np.mean(np.abs(values) > CONSISTENCY_THRESHOLD))
    return ConsistencyOutput(values.astype(np.float32), summary)
