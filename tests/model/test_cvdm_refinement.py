"""The James–Stein weight of a residual model's mean refinement (model/cvdm.py)."""

import numpy as np
import pytest

from napari_cvdm.model import refinement_weight


def _sample_mean_refinement(signal: float, n: int, seed: int = 0):
    """d = mean of n noisy samples of a refinement ``signal·pattern``, and the samples' variance."""
    rng = np.random.default_rng(seed)
    pattern = np.sin(np.linspace(0, 6 * np.pi, 64))[:, None] * np.ones((1, 64))
    samples = signal * pattern + rng.normal(size=(n, 64, 64))
    return samples.mean(0), samples.var(0, ddof=1)


def test_a_refinement_that_is_only_sampling_noise_is_dropped():
    d, var = _sample_mean_refinement(0.0, 8)
    assert refinement_weight(d, var, 8) < 0.05


def test_a_refinement_the_samples_agree_on_is_kept():
    d, var = _sample_mean_refinement(3.0, 8)
    assert refinement_weight(d, var, 8) > 0.97


def test_the_weight_is_the_share_of_the_refinement_that_is_not_noise():
    # ‖μ‖² = ½·64²·s² (a sine's mean square is ½) against the mean's noise 64²/N
    d, var = _sample_mean_refinement(0.5, 8, seed=1)
    expected = 0.125 / (0.125 + 1 / 8)
    assert refinement_weight(d, var, 8) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("n, d", [(1, np.ones((4, 4))), (8, np.zeros((4, 4)))])
def test_no_spread_or_nothing_to_shrink_keeps_the_refinement(n, d):
    assert refinement_weight(d, np.ones((4, 4)), n) == 1.0
