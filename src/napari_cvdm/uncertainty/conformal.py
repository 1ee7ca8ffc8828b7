"""Calibrated uncertainty: from the sample std of a model to error bars with a coverage guarantee.

Split-conformal calibration (Vovk et al.; Angelopoulos & Bates 2021): on held-out pairs
the score ``s = |target − mean| / std`` is computed per pixel, and for each nominal level
``α`` its conformal quantile ``q_α`` (the ``⌈(n+1)·α⌉``-th smallest of ``n`` scores). On a new
image drawn like the calibration images, ``|target − mean| ≤ q_α · std`` then holds for a
fraction ``≥ α`` of the pixels. The guarantee needs exchangeable *images*: pixels of one
image are correlated, so the effective sample size is nearer ``n_images`` than
``n_pixels``. Both are recorded, and so is the leave-one-image-out spread of per-image
coverage (what a user should expect on one new image).

Optionally the quantile is fitted per bin of the std (equal-count bins), since models are
often over-confident where they are confident and the reverse where they are not.

Everything here is numpy (stdlib ``statistics`` for normal quantiles); no torch, no Qt.
A :class:`Calibration` is JSON-safe through :meth:`Calibration.to_dict`, for the model
file's metadata under ``calibration``. Applying one: :mod:`napari_cvdm.uncertainty.apply`.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ._checks import as_images, float_list, positive_int
from .ood import DistributionSummary, summarize_distribution
from .sampler import checked_sampler, json_sampler, sampler_mismatch, sampler_words

__all__ = [
    "DEFAULT_LEVELS",
    "NO_VARIANCE_MESSAGE",
    "Calibration",
    "bin_index",
    "conformal_quantile",
    "fit_calibration",
    "normal_quantile",
]

DEFAULT_LEVELS = (0.8, 0.9, 0.95)
#: Equal-count std bins of the calibrated std's variance scale.
VARIANCE_BINS = 10
# Per-image coverage spread is reported at these quantiles over images: min, p10, median, p90, max.
SPREAD_QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
# A std below this fraction of the targets' robust range is treated as this floor: an exact
# zero (N = 1, or all samples clipped to the same value) would make the score infinite.
STD_FLOOR_FRACTION = 1e-3
NO_VARIANCE_MESSAGE = (
    "With 1 sample there is no variance: the std map would be all zeros, which is not confidence; "
    "draw at least 2 samples (8 or more for a usable error bar)."
)


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile: ``z`` with ``P(|Z| ≤ z) = level`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _pooled_scores(means, stds, targets) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Per-image flat scores and stds (std floored), and the floor used."""
    means, stds = as_images("means", means), as_images("stds", stds)
    targets = as_images("targets", targets)
    if not len(means) == len(stds) == len(targets):
        raise ValueError(
            f"got {len(means)} means, {len(stds)} stds and {len(targets)} targets; give one of each per image"
        )
    for index, (m, s, t) in enumerate(zip(means, stds, targets)):
        if not m.shape == s.shape == t.shape:
            raise ValueError(
                f"image {index}: mean {m.shape}, std {s.shape} and target {t.shape} differ in shape"
            )
        if not (np.isfinite(m).all() and np.isfinite(s).all() and np.isfinite(t).all()):
            raise ValueError(f"image {index} has NaN or infinite values")
        if (s < 0).any():
            raise ValueError(f"image {index} has negative std values")
    if all(not s.any() for s in stds):
        raise ValueError(f"every std is zero (a single sample?); {NO_VARIANCE_MESSAGE}")
    all_targets = np.concatenate([t.ravel() for t in targets])
    low, high = np.percentile(all_targets, [0.5, 99.5])
    # A constant target has no range: fall back to its magnitude (or 1).
    span = float(high - low) or float(np.abs(all_targets).max()) or 1.0
    floor = STD_FLOOR_FRACTION * span
    flat_stds = [np.maximum(s.ravel(), floor) for s in stds]
    scores = [np.abs(t.ravel() - m.ravel()) / s for m, s, t in zip(means, flat_stds, targets)]
    return scores, flat_stds, floor


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``⌈(n+1)·level⌉``-th smallest of ``n`` scores (split-conformal, finite-sample valid).

    Raises ValueError when ``n`` is too small for the level (the rank would exceed ``n``).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = scores.size
    rank = math.ceil((n + 1) * level)
    if rank > n:
        need = math.ceil(level / (1 - level))
        raise ValueError(f"{n} pixels are too few for a conformal quantile at level {level}; need {need}")
    return float(np.partition(scores, rank - 1)[rank - 1])


# ----------------------------------------------------------------------------- the calibration


@dataclass
class Calibration:
    """A fitted mapping from the model's sample std to error bars, JSON-safe via :meth:`to_dict`.

    - ``levels``: nominal coverage levels, increasing, in (0, 1).
    - ``scale``: per level, ``q_level / z_level`` (``z`` the normal quantile): multiply the
      std by it so that ``mean ± z_level·scale·std`` covers ``level``. 1 = already calibrated.
    - ``bin_edges`` (std units, ``n_bins + 1`` values, empty when unbinned) and
      ``bin_scale`` (``[bin][level]``): the same per bin of the std; a bin with too few
      pixels holds the global scale (``bin_fallback`` marks it).
    - ``variance_scale``: ``sqrt(Σ error² / Σ std²)`` over the pixels; ``variance_bin_edges``
      and ``bin_variance_scale``: the same per equal-count std bin (its own bins, empty when
      unbinned): multiply the std by it so that its square matches the squared error on
      average — the calibrated std (:func:`~.apply.calibrated_std`); 1 for files without it.
    - ``std_floor``: stds below it are raised to it before scaling (same as in the fit).
    - ``n_images``, ``n_pixels``: what the fit used; ``image_coverage``: per level, the
      coverage of the global bound on each image when fitted on the others (leave one image
      out), at the :data:`SPREAD_QUANTILES` over images (empty for 1 image).
    - ``source`` (free text: which data), ``date`` (ISO 8601, UTC), ``units`` of the std.
    - ``distribution``: what the calibration inputs looked like (for :func:`~.ood.check_in_distribution`).
    - ``sampler``: the sampling settings the fitted reconstructions used (``ModelInfo.sampler``'s
      keys: name, steps, n_samples, eta, clip, grid, log_snr_range; empty for older files). The
      scales hold for these: fewer steps or another grid spread the samples differently.
    """

    levels: list[float]
    scale: list[float]
    n_images: int
    n_pixels: int
    std_floor: float
    bin_edges: list[float] = field(default_factory=list)
    bin_scale: list[list[float]] = field(default_factory=list)
    bin_fallback: list[bool] = field(default_factory=list)
    image_coverage: list[list[float]] = field(default_factory=list)
    source: str = ""
    date: str = ""
    units: str = ""
    distribution: DistributionSummary | None = None
    variance_scale: float = 1.0
    variance_bin_edges: list[float] = field(default_factory=list)
    bin_variance_scale: list[float] = field(default_factory=list)
    sampler: dict = field(default_factory=dict)

    @property
    def binned(self) -> bool:
        return len(self.bin_scale) > 0

    def level_index(self, level: float) -> int:
        """Index of ``level`` in :attr:`levels` (ValueError naming the fitted levels otherwise)."""
        for index, fitted in enumerate(self.levels):
            if abs(fitted - level) < 1e-9:
                return index
        raise ValueError(f"level {level} was not calibrated; fitted levels are {self.levels}")

    def to_dict(self) -> dict:
        """Plain floats, ints, strings and lists (and a nested dict for ``distribution``)."""
        out = {
            "levels": [float(x) for x in self.levels],
            "scale": [float(x) for x in self.scale],
            "n_images": int(self.n_images),
            "n_pixels": int(self.n_pixels),
            "std_floor": float(self.std_floor),
            "bin_edges": [float(x) for x in self.bin_edges],
            "bin_scale": [[float(x) for x in row] for row in self.bin_scale],
            "bin_fallback": [bool(x) for x in self.bin_fallback],
            "image_coverage": [[float(x) for x in row] for row in self.image_coverage],
            "source": str(self.source),
            "date": str(self.date),
            "units": str(self.units),
            "variance_scale": float(self.variance_scale),
            "variance_bin_edges": [float(x) for x in self.variance_bin_edges],
            "bin_variance_scale": [float(x) for x in self.bin_variance_scale],
        }
        if self.distribution is not None:
            out["distribution"] = self.distribution.to_dict()
        if self.sampler:
            out["sampler"] = json_sampler(self.sampler)
        return out

    @classmethod
    def from_dict(cls, data) -> Calibration:
        """Validate and rebuild; raises ValueError with one sentence naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration must be a mapping, got {type(data).__name__}")
        missing = [key for key in ("levels", "scale", "n_images", "n_pixels", "std_floor") if key not in data]
        if missing:
            raise ValueError(f"calibration is missing the field(s) {', '.join(missing)}")
        levels = float_list(data, "levels")
        if not levels or any(not 0.0 < x < 1.0 for x in levels) or sorted(set(levels)) != levels:
            raise ValueError(f"calibration levels must be distinct, increasing and in (0, 1), got {levels}")
        scale = float_list(data, "scale", len(levels), positive=True)
        n_images, n_pixels = positive_int(data, "n_images"), positive_int(data, "n_pixels")
        if n_pixels < n_images:
            raise ValueError(f"calibration has fewer pixels ({n_pixels}) than images ({n_images})")
        std_floor = float_list({"std_floor": [data["std_floor"]]}, "std_floor", 1, positive=True)[0]
        edges = float_list(data, "bin_edges") if data.get("bin_edges") else []
        rows = data.get("bin_scale") or []
        if not isinstance(rows, list) or len(edges) != (len(rows) + 1 if rows else 0):
            raise ValueError("calibration bin_edges must have one more value than bin_scale has bins")
        if edges and any(b < a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"calibration bin_edges must be non-decreasing, got {edges}")
        bin_scale = [float_list({"bin row": r}, "bin row", len(levels), positive=True) for r in rows]
        fallback = [bool(x) for x in (data.get("bin_fallback") or [False] * len(rows))]
        if len(fallback) != len(rows):
            raise ValueError("calibration bin_fallback must have one flag per bin")
        coverage = data.get("image_coverage") or []
        if not isinstance(coverage, list) or (coverage and len(coverage) != len(levels)):
            raise ValueError("calibration image_coverage must have one row per level")
        key = "image_coverage row"
        coverage = [float_list({key: r}, key, len(SPREAD_QUANTILES), unit=True) for r in coverage]
        texts = {key: data.get(key, "") for key in ("source", "date", "units")}
        for key, value in texts.items():
            if not isinstance(value, str):
                raise ValueError(f"calibration {key} must be a string, got {type(value).__name__}")
        distribution = data.get("distribution")
        variance_scale = float_list({"variance_scale": [data.get("variance_scale", 1.0)]}, "variance_scale", 1,
                                     positive=True)[0]
        variance_edges = float_list(data, "variance_bin_edges") if data.get("variance_bin_edges") else []
        bin_variance = float_list(data, "bin_variance_scale", max(len(variance_edges) - 1, 0), positive=True) \
            if variance_edges else []
        if any(b < a for a, b in zip(variance_edges, variance_edges[1:])):
            raise ValueError(f"calibration variance_bin_edges must be non-decreasing, got {variance_edges}")
        return cls(
            levels, scale, n_images, n_pixels, std_floor, edges, bin_scale, fallback, coverage, **texts,
            distribution=None if distribution is None else DistributionSummary.from_dict(distribution),
            variance_scale=variance_scale, variance_bin_edges=variance_edges, bin_variance_scale=bin_variance,
            sampler=checked_sampler(data.get("sampler")),
        )  # fmt: skip

    def describe(self) -> str:
        """One line for ``cvdm info`` and the model card."""
        where = f" from {self.source}" if self.source else ""
        when = f" on {self.date[:10]}" if self.date else ""
        bins = f", {len(self.bin_scale)} std bins" if self.binned else ""
        scale95 = ", ".join(f"{lvl:.0%}: ×{s:.2f}" for lvl, s in zip(self.levels, self.scale))
        used = f"{self.n_images} images, {self.n_pixels} pixels{bins}{sampler_words(self.sampler)}"
        return f"calibrated{where}{when} ({used}); std scale {scale95}"

    def sampler_mismatch(self, used: dict) -> str | None:
        """A sentence when ``used`` (a reconstruction's metadata: sampler, steps, grid, log_snr_range)
        samples differently from the fit, None when it matches or the fit did not record its sampler."""
        return sampler_mismatch(self.sampler, used)


# ----------------------------------------------------------------------------- fitting


def _scales(scores: np.ndarray, levels: Sequence[float]) -> list[float]:
    return [conformal_quantile(scores, level) / normal_quantile(level) for level in levels]


def _leave_one_image_out(scores: list[np.ndarray], levels: Sequence[float]) -> list[list[float]]:
    """Per level, the spread over images of the coverage of a bound fitted on the other images."""
    if len(scores) < 2:
        return []
    coverage = np.empty((len(scores), len(levels)))
    for held_out, image_scores in enumerate(scores):
        rest = np.concatenate([s for index, s in enumerate(scores) if index != held_out])
        for j, level in enumerate(levels):
            coverage[held_out, j] = np.mean(image_scores <= conformal_quantile(rest, level))
    return [np.quantile(coverage[:, j], SPREAD_QUANTILES).tolist() for j in range(len(levels))]


def _variance_scale(scores: np.ndarray, stds: np.ndarray) -> float:
    """``sqrt(Σ error² / Σ std²)``, with ``error = score · std``."""
    return float(np.sqrt(np.sum((scores * stds) ** 2) / np.sum(stds**2)))


def _equal_count_bins(stds: np.ndarray, bins: int, min_pixels_per_bin: int) -> tuple[list, list]:
    """Edges of ``bins`` equal-count std bins and, per bin, its pixels' mask (None when too few)."""
    edges = np.quantile(stds, np.linspace(0.0, 1.0, bins + 1))
    index = bin_index(stds, edges)
    masks = [index == b for b in range(bins)]
    return edges.tolist(), [mask if int(mask.sum()) >= min_pixels_per_bin else None for mask in masks]


def _binned_scales(scores, stds, levels, bins, min_pixels_per_bin, global_scale):
    edges, masks = _equal_count_bins(stds, bins, min_pixels_per_bin)
    rows = [_scales(scores[mask], levels) if mask is not None else list(global_scale) for mask in masks]
    return edges, rows, [mask is None for mask in masks]


def _binned_variance_scales(scores, stds, bins, min_pixels_per_bin, global_scale) -> tuple[list, list]:
    """Equal-count std bins and each one's variance scale (the global one where a bin is too small)."""
    edges, masks = _equal_count_bins(stds, bins, min_pixels_per_bin)
    return edges, [_variance_scale(scores[mask], stds[mask]) if mask is not None else global_scale
                   for mask in masks]


def bin_index(std: np.ndarray, edges) -> np.ndarray:
    """Bin of each std (int array, shape of ``std``): interior edges split the bins; values beyond the outer edges go to the end bins."""
    return np.searchsorted(np.asarray(edges)[1:-1], std, side="right")


def fit_calibration(
    means,
    stds,
    targets,
    levels: Sequence[float] = DEFAULT_LEVELS,
    bins: int = 1,
    min_pixels_per_bin: int = 1000,
    source: str = "",
    units: str = "",
    inputs=None,
    pixel_size_um: float | None = None,
    variance_bins: int = VARIANCE_BINS,
    task: str = "",
) -> Calibration:
    """Split-conformal calibration of the sample std on held-out pairs.

    ``means``, ``stds``, ``targets``: lists of per-image arrays (any shape, the three of an
    image alike; images may differ in size), or one stacked array ``(n, ...)``. ``bins > 1``
    fits one quantile per equal-count bin of the std (a bin with fewer than
    ``min_pixels_per_bin`` pixels keeps the global scale); ``variance_bins`` bins the variance
    scale of the calibrated std the same way, on its own (one pooled quantile covers best, one
    variance scale per std bin matches the error's variance best; docs/uncertainty.md). ``inputs`` (the model inputs of
    the same images), ``pixel_size_um`` and ``task`` add a :class:`DistributionSummary`.
    """
    levels = sorted(float(x) for x in levels)
    if not levels or any(not 0.0 < x < 1.0 for x in levels):
        raise ValueError(f"levels must lie inside (0, 1), got {levels}")
    if int(bins) < 1 or int(variance_bins) < 1:
        raise ValueError(f"bins and variance_bins must be at least 1, got {bins} and {variance_bins}")
    scores, flat_stds, floor = _pooled_scores(means, stds, targets)
    pooled_scores, pooled_stds = np.concatenate(scores), np.concatenate(flat_stds)
    scale = _scales(pooled_scores, levels)
    calibration = Calibration(
        levels=levels,
        scale=scale,
        n_images=len(scores),
        n_pixels=int(pooled_scores.size),
        std_floor=floor,
        image_coverage=_leave_one_image_out(scores, levels),
        source=source,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        units=units,
        variance_scale=_variance_scale(pooled_scores, pooled_stds),
    )
    if int(bins) > 1:
        edges, rows, fallback = _binned_scales(
            pooled_scores, pooled_stds, levels, int(bins), max(min_pixels_per_bin, 1), scale
        )
        calibration.bin_edges, calibration.bin_scale, calibration.bin_fallback = edges, rows, fallback
    if int(variance_bins) > 1:
        calibration.variance_bin_edges, calibration.bin_variance_scale = _binned_variance_scales(
            pooled_scores, pooled_stds, int(variance_bins), max(min_pixels_per_bin, 1), calibration.variance_scale)
    if inputs is not None:
        calibration.distribution = summarize_distribution(stds, inputs, pixel_size_um, task)
    return calibration
