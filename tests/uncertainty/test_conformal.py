import json

import numpy as np
import pytest

from napari_cvdm.uncertainty.apply import calibrated_std, error_bound
from napari_cvdm.uncertainty.conformal import (
    Calibration,
    conformal_quantile,
    fit_calibration,
    normal_quantile,
)

SIZE = 64


def miscalibrated(rng, n_images, factor, size=SIZE):
    """Gaussian errors with std ``factor(std) · std``: lists of means, stds, targets."""
    means, stds, targets = [], [], []
    for _ in range(n_images):
        std = rng.uniform(0.5, 2.0, (size, size))
        mean = rng.normal(size=(size, size))
        true_std = factor(std) * std if callable(factor) else factor * std
        means.append(mean)
        stds.append(std)
        targets.append(mean + true_std * rng.normal(size=std.shape))
    return means, stds, targets


def pooled_coverage(means, stds, targets, bound):
    inside = [np.abs(t - m) <= bound(s) for m, s, t in zip(means, stds, targets)]
    return float(np.mean(np.concatenate([x.ravel() for x in inside])))


def test_normal_quantile_is_the_two_sided_gaussian_quantile():
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.8) == pytest.approx(1.281552, abs=1e-6)


def test_conformal_quantile_uses_the_finite_sample_rank():
    scores = np.arange(1.0, 20.0)  # n = 19: rank ceil(20 · 0.9) = 18
    assert conformal_quantile(scores[::-1], 0.9) == 18.0
    with pytest.raises(ValueError, match="too few"):
        conformal_quantile(np.arange(5.0), 0.95)  # ceil(6 · 0.95) = 6 > 5


def test_a_known_miscalibration_factor_is_recovered_and_calibrated_coverage_is_nominal():
    rng = np.random.default_rng(0)
    calibration = fit_calibration(*miscalibrated(rng, 8, 2.5))
    # 32768 pixels: the 95 % quantile of |Z| has a relative standard error of
    # sqrt(0.95·0.05/n) / (2φ(1.96)·1.96) ≈ 0.5 %; 2 % is four of them.
    assert calibration.scale == pytest.approx([2.5, 2.5, 2.5], rel=0.02)
    assert (calibration.n_images, calibration.n_pixels) == (8, 8 * SIZE * SIZE)
    fresh = miscalibrated(rng, 8, 2.5)
    for level in calibration.levels:
        covered = pooled_coverage(*fresh, lambda s: error_bound(s, calibration, level))
        assert covered == pytest.approx(level, abs=0.01)
    # Uncalibrated, ±1.96 std covers only P(|Z| < 1.96/2.5) ≈ 57 %.
    assert pooled_coverage(*fresh, lambda s: 1.96 * s) < 0.6
    # calibrated_std is the std that makes the Gaussian ±1.96 interval right.
    covered = pooled_coverage(*fresh, lambda s: 1.96 * calibrated_std(s, calibration, 0.95))
    assert covered == pytest.approx(0.95, abs=0.01)


def test_leave_one_image_out_spread_brackets_the_level():
    rng = np.random.default_rng(1)
    calibration = fit_calibration(*miscalibrated(rng, 6, 1.0))
    assert len(calibration.image_coverage) == 3
    for level, (low, p10, median, p90, high) in zip(calibration.levels, calibration.image_coverage):
        assert low <= p10 <= median <= p90 <= high
        assert low < level + 0.02 and high > level - 0.02 and abs(median - level) < 0.02
    assert fit_calibration(*miscalibrated(rng, 1, 1.0)).image_coverage == []


def test_binned_calibration_recovers_a_factor_that_differs_by_bin():
    rng = np.random.default_rng(2)
    factor = lambda std: np.where(std < 1.25, 1.5, 3.0)  # noqa: E731 - the median of U(0.5, 2) is 1.25
    calibration = fit_calibration(*miscalibrated(rng, 8, factor), bins=2)
    assert calibration.bin_edges[1] == pytest.approx(1.25, abs=0.02)
    assert calibration.bin_scale[0] == pytest.approx([1.5] * 3, rel=0.03)
    assert calibration.bin_scale[1] == pytest.approx([3.0] * 3, rel=0.03)
    assert calibration.bin_fallback == [False, False]
    fresh = miscalibrated(rng, 8, factor)
    assert pooled_coverage(*fresh, lambda s: error_bound(s, calibration)) == pytest.approx(0.95, abs=0.01)
    # Values beyond the fitted std range fall into the end bins.
    far = calibrated_std(np.array([0.01, 100.0]), calibration, 0.95)
    assert far / np.maximum(np.array([0.01, 100.0]), calibration.std_floor) == pytest.approx(
        [calibration.bin_scale[0][2], calibration.bin_scale[1][2]]
    )


def test_a_bin_with_too_few_pixels_falls_back_to_the_global_scale():
    rng = np.random.default_rng(3)
    calibration = fit_calibration(*miscalibrated(rng, 2, 2.0, size=16), bins=4, min_pixels_per_bin=200)
    assert calibration.bin_fallback == [True] * 4
    assert all(row == calibration.scale for row in calibration.bin_scale)


def test_zero_std_uses_a_floor_tied_to_the_data_range():
    rng = np.random.default_rng(4)
    means, stds, targets = miscalibrated(rng, 2, 1.0)
    stds[0][:8] = 0.0
    calibration = fit_calibration(means, stds, targets)
    span = np.subtract(*np.percentile(np.concatenate([t.ravel() for t in targets]), [99.5, 0.5]))
    assert calibration.std_floor == pytest.approx(1e-3 * span)
    assert np.all(error_bound(np.zeros(3), calibration) > 0)


def test_all_zero_stds_single_sample_is_refused():
    zeros = [np.zeros((8, 8))]
    with pytest.raises(ValueError, match="1 sample"):
        fit_calibration(zeros, zeros, [np.ones((8, 8))])


def test_bad_inputs_are_named():
    rng = np.random.default_rng(5)
    means, stds, targets = miscalibrated(rng, 2, 1.0, size=8)
    with pytest.raises(ValueError, match="image 1"):
        fit_calibration(means, stds, [targets[0], targets[1][:4]])
    with pytest.raises(ValueError, match="one of each"):
        fit_calibration(means, stds[:1], targets)
    with pytest.raises(ValueError, match="negative"):
        fit_calibration(means, [-s for s in stds], targets)


def test_images_of_different_sizes_are_pooled():
    rng = np.random.default_rng(6)
    small, large = miscalibrated(rng, 1, 2.0, size=16), miscalibrated(rng, 1, 2.0, size=48)
    calibration = fit_calibration(*(a + b for a, b in zip(small, large)))
    assert calibration.n_pixels == 16 * 16 + 48 * 48 and calibration.n_images == 2


def test_to_dict_round_trips_through_json():
    rng = np.random.default_rng(7)
    means, stds, targets = miscalibrated(rng, 3, 2.0, size=32)
    calibration = fit_calibration(
        means, stds, targets, bins=3, min_pixels_per_bin=10, source="3 SIM pairs", units="photons",
        inputs=[m + 5 for m in means], pixel_size_um=0.0313,
    )  # fmt: skip
    text = json.dumps(calibration.to_dict(), allow_nan=False)
    restored = Calibration.from_dict(json.loads(text))
    assert restored == calibration
    assert restored.source == "3 SIM pairs" and restored.date.endswith("+00:00")
    assert "3 images" in restored.describe()


def valid_dict():
    rng = np.random.default_rng(8)
    return fit_calibration(*miscalibrated(rng, 2, 2.0, size=16), bins=2, min_pixels_per_bin=10).to_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("scale"), "missing"),
        (lambda d: d.update(levels=[0.9, 0.8, 0.95]), "increasing"),
        (lambda d: d.update(levels=[0.8, 0.9, 1.5]), r"in \(0, 1\)"),
        (lambda d: d.update(scale=[1.0, -2.0, 1.0]), "positive"),
        (lambda d: d.update(scale=[1.0, 2.0]), "3 values"),
        (lambda d: d.update(scale="2.5"), "list of numbers"),
        (lambda d: d.update(n_images=0), "positive integer"),
        (lambda d: d.update(n_images=2.5), "positive integer"),
        (lambda d: d.update(n_pixels=1), "fewer pixels"),
        (lambda d: d.update(bin_edges=[0.1, 0.5]), "one more value"),
        (lambda d: d.update(bin_edges=[2.0, 1.0, 3.0]), "non-decreasing"),
        (lambda d: d.update(source=3), "string"),
        (lambda d: d.update(image_coverage=[[0.5, 0.6, 0.7, 0.8, 1.2]] * 3), r"\[0, 1\]"),
        (lambda d: d.update(std_floor=float("nan")), "finite"),
    ],
)
def test_from_dict_rejects_bad_data_with_a_sentence(change, message):
    data = valid_dict()
    change(data)
    with pytest.raises(ValueError, match=message):
        Calibration.from_dict(data)


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ValueError, match="mapping"):
        Calibration.from_dict([1, 2])


def test_applying_an_uncalibrated_level_is_refused():
    calibration = Calibration.from_dict(valid_dict())
    with pytest.raises(ValueError, match="not calibrated"):
        error_bound(np.ones(3), calibration, level=0.99)



def test_the_calibrated_std_matches_the_squared_error_per_bin_and_round_trips():
    """Variance matching: the std scaled by sqrt(Σ error² / Σ std²) (per std bin) has the error's variance."""
    rng = np.random.default_rng(5)
    factor = lambda std: np.where(std < 1.25, 1.5, 3.0)  # noqa: E731
    calibration = fit_calibration(*miscalibrated(rng, 8, factor), variance_bins=2)
    assert not calibration.binned and calibration.variance_bin_edges[1] == pytest.approx(1.25, abs=0.02)
    assert calibration.bin_variance_scale == pytest.approx([1.5, 3.0], rel=0.03)
    means, stds, targets = miscalibrated(rng, 8, factor)
    for mean, std, target in zip(means, stds, targets):
        calibrated = calibrated_std(std, calibration)
        for in_bin in (std < 1.25, std >= 1.25):
            assert np.mean((target - mean)[in_bin] ** 2) == pytest.approx(np.mean(calibrated[in_bin] ** 2), rel=0.1)
    again = Calibration.from_dict(calibration.to_dict())
    assert again.variance_scale == calibration.variance_scale and again.bin_variance_scale == calibration.bin_variance_scale
    older = {key: value for key, value in calibration.to_dict().items() if "variance" not in key}
    assert Calibration.from_dict(older).variance_scale == 1.0  # files written before the field

