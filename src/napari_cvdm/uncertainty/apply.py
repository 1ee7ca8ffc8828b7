"""Apply a stored calibration to a reconstruction: the calibrated std, the "± error" bound and the checks.

:func:`uncertainty_outputs` turns a reconstruction's variance into the calibrated std and
the "± error at 95 %" bound (output units, shaped like the variance), with the
out-of-distribution sentence, the small-N note and the sampler-mismatch sentence.
No Qt here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..checkpoint import ModelInfo
from .conformal import NO_VARIANCE_MESSAGE, Calibration, bin_index, normal_quantile
from .ood import check_in_distribution

__all__ = [
    "ERROR_LEVEL",
    "UNCALIBRATED",
    "UncertaintyOutputs",
    "calibrated_std",
    "calibration_line",
    "error_bound",
    "model_calibration",
    "sample_variance_note",
    "uncertainty_outputs",
    "variance_relative_error",
]

#: The level of the "± error" output (layer, TIFF).
ERROR_LEVEL = 0.95
UNCALIBRATED = "uncalibrated"

# ----------------------------------------------------------------------------- small N


def variance_relative_error(n_samples: int) -> float:
    """Relative standard error of a sample variance from ``n_samples`` Gaussian draws, ``sqrt(2/(N−1))``.

    The std's own relative error is about half of it, ``sqrt(1/(2(N−1)))``. Raises
    ValueError (with :data:`NO_VARIANCE_MESSAGE`) for ``N = 1``: one sample has no variance.
    """
    n = int(n_samples)
    if n < 1:
        raise ValueError(f"the number of samples must be at least 1, got {n_samples}")
    if n == 1:
        raise ValueError(NO_VARIANCE_MESSAGE)
    return math.sqrt(2.0 / (n - 1))


def sample_variance_note(n_samples: int) -> str:
    """One sentence for the user on how far the std map of ``n_samples`` samples can be trusted."""
    if int(n_samples) == 1:
        return NO_VARIANCE_MESSAGE
    relative = variance_relative_error(n_samples)
    return (
        f"With {int(n_samples)} samples the variance map is itself uncertain by about ±{relative:.0%} "
        f"(the std by ±{relative / 2:.0%}) per pixel."
    )


# ----------------------------------------------------------------------------- calibrated std


def _scale_map(std: np.ndarray, calibration: Calibration, level: float | None) -> np.ndarray:
    if level is None:
        global_scale, per_bin = calibration.variance_scale, calibration.bin_variance_scale
        edges = calibration.variance_bin_edges
    else:
        j = calibration.level_index(level)
        global_scale, per_bin = calibration.scale[j], [row[j] for row in calibration.bin_scale]
        edges = calibration.bin_edges
    if not per_bin:
        return np.full(std.shape, global_scale)
    return np.asarray(per_bin)[bin_index(std, edges)]


def calibrated_std(std, calibration: Calibration, level: float | None = None) -> np.ndarray:
    """The calibrated std of ``max(std, std_floor)`` (same shape and units, float64).

    ``level=None``: scaled by ``variance_scale`` (per std bin if fitted so), so that its square
    matches the squared error on average: the std to read as a std. ``level``: scaled by
    ``q_level / z_level``, so that ``mean ± z_level·calibrated`` covers ``level`` (z = 1.96 at 0.95).
    """
    std = np.maximum(np.asarray(std, dtype=np.float64), calibration.std_floor)
    return std * _scale_map(std, calibration, level)


def error_bound(std, calibration: Calibration, level: float = 0.95) -> np.ndarray:
    """Half-width of the "± error at ``level``" interval around the mean, ``q_level · std`` (std units)."""
    return normal_quantile(level) * calibrated_std(std, calibration, level)


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
