"""Calibrate a model on held-out pairs: the job that fits and stores a :class:`~.conformal.Calibration`.

:func:`calibrate_model` reconstructs each pair's input with
:func:`napari_cvdm.engine.reconstruct` and fits
:func:`~napari_cvdm.uncertainty.conformal.fit_calibration` on (mean, std, target) in the output's units
(QPI: radians, the free phase offset removed; SR: the target mapped onto the mean, see :func:`_aligned`);
the result goes into the model file as ``ModelInfo.calibration`` (:func:`with_calibration`).
:func:`refit_base` refits a QPI model's TIE regulariser on the same kind of pairs, before calibrating.
:func:`crops`: the validation crops calibrated on at the end of training. No Qt here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..residual import FIT_IMAGES, TIEBase, tie_of
from ..checkpoint import ModelInfo
from ..errors import InputError
from .conformal import Calibration, fit_calibration
from .ood import summarize_distribution
from .sampler import sampler_used

__all__ = ["TRAINING_MAX_SAMPLES", "calibrate_model", "crops", "refit_base", "sampler_used",
           "with_calibration"]

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
    from ..metrics import align_offset

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
    from ..physics.optics import downsample

    return downsample(image, int(info.upsampling_factor))


def calibrate_model(model, info: ModelInfo, pairs: Sequence, settings=None, source: str = "",
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, *,
                    input_pixel_size_um: float | None = None, bins: int = 1) -> Calibration:
    """Split-conformal calibration of ``model`` on ``pairs`` (``data.ImagePair``, input on the target grid).

    Each whole pair input is reconstructed (``settings``; N ≥ 2 samples) from the raw grid it was
    upsampled from (:func:`~napari_cvdm.physics.optics.downsample`), as a user's input is, so the
    data-consistency step sees the camera's pixels; ``input_pixel_size_um`` is the raw input's pixel
    size (None: the model's). ``progress(images done, total)`` after each pair; ``should_stop`` is passed to
    the reconstruction (raises :class:`~napari_cvdm.errors.Cancelled`). The caller bounds the
    count and size of the pairs: the cost is that of predicting them.
    """
    from ..engine import ReconstructionSettings, reconstruct

    settings = settings or ReconstructionSettings()
    if not pairs:
        raise InputError("No pairs to calibrate on: give at least one input/target pair.")
    if int(settings.n_samples) < 2:
        raise InputError(f"Calibration needs a variance: use at least 2 samples (got {settings.n_samples}).")
    means, stds, targets, inputs = [], [], [], []
    for done, pair in enumerate(pairs, 1):
        result = reconstruct(model, info, _raw_grid(info, pair.input), settings, should_stop=should_stop,
                             input_pixel_size_um=input_pixel_size_um)
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


def with_calibration(info: ModelInfo, calibration: Calibration) -> ModelInfo:
    """A copy of ``info`` that carries ``calibration``; its sampling defaults become those the
    calibration was fitted with, since the error bars hold for them (unchanged when it recorded none).
    The sample count stays the model's: it trades time for a less noisy variance, and the
    variance note says how noisy."""
    fitted = {key: value for key, value in calibration.sampler.items() if key != "n_samples"}
    sampler = {**info.sampler, **fitted}
    return dataclasses.replace(info, calibration=calibration.to_dict(), sampler=sampler)


def crops(pairs: Sequence, count: int = TRAINING_CROPS, side: int = TRAINING_CROP_SIDE) -> list:
    """Up to ``count`` non-overlapping crops of at most ``side``² of ``pairs``, taken in turn from each pair."""
    from ..data import ImagePair

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
