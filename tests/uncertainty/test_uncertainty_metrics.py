import numpy as np
import pytest

from napari_cvdm.uncertainty.metrics import (
    ause,
    coverage,
    ence,
    self_consistency_report,
    spearman,
    uce,
    uncertainty_report,
)


def calibrated_sample(rng, n=200_000, factor=1.0):
    std = rng.uniform(0.5, 2.0, n)
    mean = np.zeros(n)
    return mean, std, factor * std * rng.normal(size=n)


def test_coverage_of_a_hand_computed_case():
    mean, std = np.zeros(4), np.ones(4)
    target = np.array([0.5, 1.5, 2.5, -1.0])  # |e| ≤ 1.28: 2 of 4; ≤ 1.64: 3; ≤ 1.96: 3
    assert coverage(mean, std, target) == {0.8: 0.5, 0.9: 0.75, 0.95: 0.75}


def test_calibrated_gaussian_errors_cover_nominal_and_have_near_zero_uce_and_ence():
    rng = np.random.default_rng(0)
    sample = calibrated_sample(rng)
    for level, value in coverage(*sample).items():
        assert value == pytest.approx(level, abs=0.005)
    # Sampling noise of UCE ≈ E[var]·sqrt(2·10/N) ≈ 1.75·0.01 ≈ 0.02.
    assert uce(*sample) < 0.03
    assert ence(*sample) < 0.02
    miscalibrated = calibrated_sample(rng, factor=2.0)
    assert uce(*miscalibrated) == pytest.approx(3 * np.mean(miscalibrated[1] ** 2), rel=0.05)
    assert ence(*miscalibrated) == pytest.approx(1.0, rel=0.03)


def test_uce_and_ence_of_a_tiny_hand_computed_case():
    mean = np.zeros(4)
    std = np.array([1.0, 1.0, 2.0, 2.0])
    target = np.array([2.0, 0.0, 0.0, 0.0])  # bins {1, 1} and {2, 2}: MSE 2 and 0, mean variance 1 and 4
    assert uce(mean, std, target, n_bins=2) == pytest.approx(0.5 * 1 + 0.5 * 4)
    assert ence(mean, std, target, n_bins=2) == pytest.approx(0.5 * (abs(1 - np.sqrt(2)) + 1.0))


def test_ause_is_zero_for_the_oracle_ordering_and_positive_otherwise():
    rng = np.random.default_rng(1)
    error = rng.exponential(size=1000)
    mean, target = np.zeros(1000), error
    assert ause(mean, error, target) == pytest.approx(0.0, abs=1e-12)
    assert ause(mean, 2 * error + 1, target) == pytest.approx(0.0, abs=1e-12)  # only the order matters
    assert ause(mean, rng.random(1000), target) > 0.2
    assert ause(mean, -error, target) > ause(mean, rng.random(1000), target)


def test_an_over_confident_or_uninformative_std_is_flagged():
    rng = np.random.default_rng(7)
    mean, std, target = calibrated_sample(rng)
    over_confident = 0.5 * std
    assert uce(mean, over_confident, target) > 0.5 * np.mean(std**2)
    assert coverage(mean, over_confident, target, (0.95,))[0.95] < 0.75
    shuffled = rng.permutation(std)
    assert abs(spearman(mean, shuffled, target)) < 0.02
    assert spearman(mean, std, target) > 0.3
    assert ause(mean, shuffled, target) > 1.5 * ause(mean, std, target)


def test_spearman_is_one_for_a_monotone_std_and_pools_image_lists():
    error = np.arange(1.0, 11.0)
    assert spearman(np.zeros(10), np.sqrt(error), error) == pytest.approx(1.0)
    halves = [np.zeros(5), np.zeros(5)], [np.sqrt(error[:5]), np.sqrt(error[5:])], [error[:5], error[5:]]
    assert spearman(*halves) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pixel count"):
        spearman(np.zeros(3), np.ones(4), np.ones(4))


def test_uncertainty_report_names_every_metric():
    rng = np.random.default_rng(2)
    report = uncertainty_report(*calibrated_sample(rng, n=5000))
    assert set(report) == {"coverage_80", "coverage_90", "coverage_95", "uce", "ence", "ause", "spearman"}


def test_self_consistency_ceiling_of_a_perfect_sampler_sits_below_nominal_by_the_finite_n_amount():
    rng = np.random.default_rng(3)
    n_samples = 8
    scale = rng.uniform(0.5, 2.0, (32, 32))
    samples = scale * rng.normal(size=(n_samples, 32, 32))
    report = self_consistency_report([samples, samples[:, :16]])
    # Held-out − mean of the other 7 over their std is t-distributed (6 dof) times sqrt(1 + 1/7):
    # P(|T₆| ≤ 1.96 / sqrt(8/7)) ≈ 0.884.
    assert report["coverage_95"] == pytest.approx(0.884, abs=0.01)
    assert report["spearman"] > 0.2
    with pytest.raises(ValueError, match="at least 3"):
        self_consistency_report(samples[:2])
    single = self_consistency_report(samples, held_out=0)
    assert set(single) == set(report)
