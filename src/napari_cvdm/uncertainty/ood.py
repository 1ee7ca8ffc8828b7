"""Is a new image like the calibration images? Per-image features of an input and its std, and the check.

A :class:`DistributionSummary` records each feature's ``[min, median, max]`` over the
calibration images; :func:`check_in_distribution` says in one sentence when a new image
(or its pixel size) lies far outside. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..physics.noise import defocus_relative_noise_std, finest_haar_noise_std
from ._checks import as_images, float_list, is_number, positive_int

__all__ = ["DistributionSummary", "check_in_distribution", "feature_names", "summarize_distribution"]

# A feature this many times beyond the range seen in calibration counts as "far outside".
# Over n calibration images, the observed [min, max] of a feature already brackets about
# (n−1)/(n+1) of the population (≥ 88 % for n ≥ 16); a further factor 2 is far past the
# sampling noise of the features themselves (the MAD noise estimate of a 128² image is good
# to ~1 %, std quantiles to less) and past the spread a calibrated model tolerates (its
# scale factors change by well under 2× between std bins on the shipped models).
FEATURE_MARGIN = 2.0
# The defocus-stack noise estimate reads 0.9–0.95 of the true std where the object is smooth and
# more only where phase texture leaks into it, so its calibration maximum is already generous:
# 1.5× (chosen on one seeded draw of the calibration goal's streams, checked on two others).
DEFOCUS_NOISE_MARGIN = 1.5
# The model's optics live in pixels: a pixel size 20 % off moves the OTF cut-off in
# cycles/pixel further than the whole NA/λ range of the simulated training data (±7 %).
PIXEL_SIZE_TOLERANCE = 0.2


def _robust_range(image: np.ndarray) -> float:
    low, high = np.percentile(image, [0.5, 99.5])
    return float(high - low)


def _defocus_noise(std: np.ndarray, image: np.ndarray) -> float:
    """Median over the stacks of ``image`` ``(..., 2, H, W)`` of the TIE noise estimate (÷ mean intensity)."""
    stacks = image.reshape(-1, 2, *image.shape[-2:])
    return float(np.median([defocus_relative_noise_std(stack) for stack in stacks]))


def _relative_to_range(measure: Callable[[np.ndarray, np.ndarray], float]):
    """``measure(std, image)`` divided by the input's robust intensity range."""
    return lambda std, image: float(measure(std, image)) / max(_robust_range(image), 1e-12)


@dataclass(frozen=True)
class _Feature:
    words: str
    value: Callable[[np.ndarray, np.ndarray], float]  # (std, input image) → a number ≥ 0
    margin: float = FEATURE_MARGIN


_FEATURES = {
    "std_p50": _Feature("median std relative to the input's intensity range",
                        _relative_to_range(lambda std, _: np.percentile(std, 50))),
    "std_p90": _Feature("90th-percentile std relative to the input's intensity range",
                        _relative_to_range(lambda std, _: np.percentile(std, 90))),
    "noise": _Feature("noise level relative to the input's intensity range",
                      _relative_to_range(lambda _, image: finest_haar_noise_std(image))),
    "defocus_noise": _Feature("noise level of the defocus stack relative to its mean intensity",
                              _defocus_noise, DEFOCUS_NOISE_MARGIN),
}


def feature_names(task: str = "") -> tuple[str, ...]:
    """The features recorded for a ``task``'s inputs: QPI's noise from the two planes' physics, else Haar's."""
    return ("std_p50", "std_p90", "defocus_noise" if task == "qpi" else "noise")


@dataclass
class DistributionSummary:
    """What the calibration inputs looked like: per feature ``[min, median, max]`` over images.

    Features (unitless, per image; see :func:`feature_names`): the std's median and 90th
    percentile divided by the input's robust (0.5–99.5 %) intensity range, and a noise level:
    for a defocus stack the TIE estimate relative to its mean intensity
    (:func:`~napari_cvdm.physics.noise.defocus_relative_noise_std`), else the Haar estimate relative to the
    range; ``pixel_size_um`` of the input (None if unknown).
    """

    n_images: int
    features: dict[str, list[float]]
    pixel_size_um: float | None = None

    def to_dict(self) -> dict:
        return {
            "n_images": int(self.n_images),
            "features": {k: [float(x) for x in v] for k, v in self.features.items()},
            "pixel_size_um": None if self.pixel_size_um is None else float(self.pixel_size_um),
        }

    @classmethod
    def from_dict(cls, data) -> DistributionSummary:
        if not isinstance(data, dict) or not isinstance(data.get("features"), dict):
            raise ValueError("calibration distribution must be a mapping with a 'features' mapping")
        n_images = positive_int(data, "n_images")
        features = {}
        for name, values in data["features"].items():
            triple = float_list({f"distribution feature {name}": values}, f"distribution feature {name}", 3)
            if not 0 <= triple[0] <= triple[1] <= triple[2]:
                raise ValueError(f"calibration distribution feature {name} must be [min, median, max] ≥ 0")
            features[str(name)] = triple
        pixel = data.get("pixel_size_um")
        if pixel is not None and (not is_number(pixel) or not pixel > 0):
            raise ValueError(f"calibration distribution pixel_size_um must be positive, got {pixel!r}")
        return cls(n_images, features, None if pixel is None else float(pixel))


def summarize_distribution(stds, images, pixel_size_um: float | None = None, task: str = "") -> DistributionSummary:
    """Summarise per-image features of the calibration inputs ``images`` (QPI: stacks ``(..., 2, H, W)``)
    and their model stds."""
    stds, images = as_images("stds", stds), as_images("inputs", images)
    if len(stds) != len(images):
        raise ValueError(f"got {len(stds)} std maps for {len(images)} inputs")
    features = {}
    for name in feature_names(task):
        values = [_FEATURES[name].value(s, x) for s, x in zip(stds, images)]
        features[name] = np.quantile(values, [0.0, 0.5, 1.0]).tolist()
    return DistributionSummary(len(images), features, pixel_size_um)


def check_in_distribution(
    summary: DistributionSummary, std, image, pixel_size_um: float | None = None
) -> str | None:
    """A warning sentence when ``image`` (the model input) and its ``std`` are far off calibration, else None.

    "Far": a feature the summary recorded more than its margin (:data:`FEATURE_MARGIN`,
    :data:`DEFOCUS_NOISE_MARGIN`) × beyond the calibration's [min, max], or a pixel size more
    than :data:`PIXEL_SIZE_TOLERANCE` away from the calibration's.
    """
    reasons = []
    if pixel_size_um is not None and summary.pixel_size_um is not None:
        ratio = float(pixel_size_um) / summary.pixel_size_um
        if abs(ratio - 1.0) > PIXEL_SIZE_TOLERANCE:
            seen = f"{summary.pixel_size_um:.4g} µm"
            reasons.append(f"its pixel size {pixel_size_um:.4g} µm differs from {seen}")
    std, image = np.asarray(std, dtype=np.float64), np.asarray(image, dtype=np.float64)
    for name in (name for name in summary.features if name in _FEATURES):  # a file's unknown feature: skipped
        feature, (low, _, high) = _FEATURES[name], summary.features[name]
        value = feature.value(std, image)
        if value > feature.margin * high:
            times = value / max(high, 1e-300)
            reasons.append(f"its {feature.words} is {value:.3g}, {times:.1f}× the highest seen ({high:.3g})")
        elif value * feature.margin < low:
            times = low / max(value, 1e-300)
            reasons.append(f"its {feature.words} is {value:.3g}, {times:.1f}× below the lowest seen ({low:.3g})")
    if not reasons:
        return None
    return (
        f"This image is unlike the {summary.n_images} calibration image(s): {'; '.join(reasons)}; "
        "the error bars may not hold."
    )
