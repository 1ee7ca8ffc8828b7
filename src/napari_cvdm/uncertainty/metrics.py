"""Metrics of a predicted uncertainty against the true error (numpy in, floats out).

Every function takes ``mean``, ``std``, ``target`` as one array each or as lists of
per-image arrays (any sizes; the pixels are pooled). ``std`` is a standard deviation in
the data's units; Gaussian intervals ``mean ± z·std`` are used for coverage.

- :func:`coverage`: fraction of pixels inside ``mean ± z_level·std`` per level.
- :func:`uce`, :func:`ence`: calibration errors over equal-count bins of the variance
  (Laves et al. 2020; Levi et al. 2022).
- :func:`ause`: area between the sparsification curve of the std and of the oracle (Ilg et al. 2018).
- :func:`spearman`: rank correlation of std and |error|.
- :func:`uncertainty_report` all of them; :func:`self_consistency_report` the same with
  one of the model's own samples as the truth: the ceiling a perfectly calibrated sampler
  with this many samples would reach.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .conformal import DEFAULT_LEVELS, normal_quantile

__all__ = ["ause", "coverage", "ence", "self_consistency_report", "spearman", "uce", "uncertainty_report"]


def _pool(name: str, images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        return images.astype(np.float64, copy=False).ravel()
    arrays = [np.asarray(image, dtype=np.float64).ravel() for image in images]
    if not arrays:
        raise ValueError(f"{name} is empty")
    return np.concatenate(arrays)


def _triple(mean, std, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std, target = _pool("mean", mean), _pool("std", std), _pool("target", target)
    if not mean.size == std.size == target.size:
        sizes = f"mean ({mean.size}), std ({std.size}) and target ({target.size})"
        raise ValueError(f"{sizes} differ in pixel count")
    return mean, std, target


def coverage(mean, std, target, levels: Sequence[float] = DEFAULT_LEVELS) -> dict[float, float]:
    """Per level, the fraction of pixels with ``|target − mean| ≤ z_level·std`` (``z_0.95 = 1.96``)."""
    mean, std, target = _triple(mean, std, target)
    error = np.abs(target - mean)
    return {float(level): float(np.mean(error <= normal_quantile(level) * std)) for level in levels}


def _variance_bins(std: np.ndarray, n_bins: int) -> list[np.ndarray]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return [chunk for chunk in np.array_split(np.argsort(std, kind="stable"), n_bins) if chunk.size]


def uce(mean, std, target, n_bins: int = 10) -> float:
    """Uncertainty calibration error ``Σ_b (n_b/N)·|MSE_b − mean variance_b|`` in squared data units.

    Equal-count bins of the predicted variance. 0 for perfect calibration, up to sampling
    noise of about ``variance·sqrt(2·n_bins/N)``.
    """
    mean, std, target = _triple(mean, std, target)
    squared_error, variance = (target - mean) ** 2, std**2
    bins = _variance_bins(std, n_bins)
    total = sum(chunk.size * abs(squared_error[chunk].mean() - variance[chunk].mean()) for chunk in bins)
    return float(total / std.size)


def ence(mean, std, target, n_bins: int = 10) -> float:
    """Expected normalised calibration error ``(1/B) Σ_b |RMV_b − RMSE_b| / RMV_b`` (unitless).

    ``RMV_b`` is the root mean variance and ``RMSE_b`` the root mean squared error of bin
    ``b`` (equal-count bins of the variance); bins with zero variance are left out.
    """
    mean, std, target = _triple(mean, std, target)
    ratios = []
    for chunk in _variance_bins(std, n_bins):
        rmv = np.sqrt(np.mean(std[chunk] ** 2))
        if rmv > 0:
            ratios.append(abs(rmv - np.sqrt(np.mean((target[chunk] - mean[chunk]) ** 2))) / rmv)
    if not ratios:
        raise ValueError("every std is zero: ENCE is undefined")
    return float(np.mean(ratios))


def ause(mean, std, target, n_fractions: int = 20) -> float:
    """Area under the sparsification error of the absolute error, in units of the mean absolute error.

    For fractions ``f = 0, 1/n, …`` remove the ``f`` most uncertain pixels (by std) and take
    the mean |error| of the rest; the oracle removes by |error| itself. AUSE is the mean gap
    between the two curves over ``f ∈ [0, 1)`` divided by the mean |error|: 0 when the std
    orders pixels exactly like the error, larger the worse the ordering.
    """
    mean, std, target = _triple(mean, std, target)
    error = np.abs(target - mean)
    scale = error.mean()
    if scale == 0:
        return 0.0
    keep = error.size - np.floor(np.arange(n_fractions) / n_fractions * error.size).astype(int)

    def curve(order_by: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(error[np.argsort(order_by, kind="stable")])  # least uncertain first
        return cumulative[keep - 1] / keep

    return float(np.mean(curve(std) - curve(error)) / scale)


def spearman(mean, std, target) -> float:
    """Spearman rank correlation of the std with the absolute error (1: ranks agree; ties averaged)."""
    from scipy.stats import spearmanr

    mean, std, target = _triple(mean, std, target)
    return float(spearmanr(std, np.abs(target - mean)).statistic)


def uncertainty_report(mean, std, target, levels: Sequence[float] = DEFAULT_LEVELS, n_bins: int = 10) -> dict:
    """All the metrics above, keyed ``coverage_80``, ``coverage_90``, ``coverage_95``, ``uce``, ``ence``,
    ``ause`` and ``spearman``.
    """
    covered = coverage(mean, std, target, levels)
    report = {f"coverage_{round(level * 100)}": value for level, value in covered.items()}
    report["uce"] = uce(mean, std, target, n_bins)
    report["ence"] = ence(mean, std, target, n_bins)
    report["ause"] = ause(mean, std, target)
    report["spearman"] = spearman(mean, std, target)
    return report


def self_consistency_report(
    samples, levels: Sequence[float] = DEFAULT_LEVELS, n_bins: int = 10, held_out: int | None = None
) -> dict:
    """The :func:`uncertainty_report` with one of the model's own samples standing in for the truth.

    ``samples`` is ``(N, ...)`` (one image) or a list of such arrays (one per image, each
    with its own N ≥ 3). Sample ``held_out`` (default: each in turn, pixels pooled) plays
    the target; the mean and std (ddof = 1) of the other ``N − 1`` are the prediction. A
    perfectly calibrated sampler scores this in expectation, *with N − 1 samples*: finite N
    alone puts coverage below nominal (the held-out draw varies by ``σ·sqrt(1 + 1/(N−1))``
    and the std is estimated), which is the ceiling to read the real scores against.
    """
    stacks = [np.asarray(samples, dtype=np.float64)] if isinstance(samples, np.ndarray) else [
        np.asarray(s, dtype=np.float64) for s in samples
    ]
    means, stds, targets = [], [], []
    for stack in stacks:
        if stack.shape[0] < 3:
            raise ValueError(f"the self-consistency ceiling needs at least 3 samples, got {stack.shape[0]}")
        chosen = range(stack.shape[0]) if held_out is None else [held_out]
        for index in chosen:
            others = np.delete(stack, index, axis=0)
            means.append(others.mean(axis=0))
            stds.append(others.std(axis=0, ddof=1))
            targets.append(stack[index])
    return uncertainty_report(means, stds, targets, levels, n_bins)
