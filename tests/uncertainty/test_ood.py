import json

import numpy as np
import pytest

from napari_cvdm.uncertainty.ood import DistributionSummary, check_in_distribution, summarize_distribution


def calibration_like_images(rng, n, noise, std_level):
    images = [np.sin(np.mgrid[:64, :64][1] / 6.0) + 1.0 + noise * rng.normal(size=(64, 64)) for _ in range(n)]
    stds = [std_level * rng.uniform(0.5, 1.5, (64, 64)) for _ in range(n)]
    return stds, images


def test_in_distribution_inputs_pass_and_foreign_ones_are_named():
    rng = np.random.default_rng(11)
    summary = summarize_distribution(*calibration_like_images(rng, 8, 0.05, 0.02), pixel_size_um=0.1)
    (std,), (image,) = calibration_like_images(rng, 1, 0.05, 0.02)
    assert check_in_distribution(summary, std, image, 0.1) is None
    assert check_in_distribution(summary, std, image, None) is None  # unknown pixel size: not checked
    warning = check_in_distribution(summary, std, image, 0.2)
    assert "pixel size" in warning and "8 calibration image" in warning
    (std,), (noisy,) = calibration_like_images(rng, 1, 0.5, 0.02)
    assert "noise level" in check_in_distribution(summary, std, noisy, 0.1)
    (std,), (image,) = calibration_like_images(rng, 1, 0.05, 0.002)
    assert "below the lowest" in check_in_distribution(summary, std, image, 0.1)


def test_distribution_summary_round_trips_and_validates():
    rng = np.random.default_rng(12)
    summary = summarize_distribution(*calibration_like_images(rng, 3, 0.05, 0.02), pixel_size_um=0.1)
    assert DistributionSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary
    bad = summary.to_dict()
    bad["features"]["noise"] = [0.3, 0.2, 0.1]
    with pytest.raises(ValueError, match="min, median, max"):
        DistributionSummary.from_dict(bad)



def test_a_qpi_summary_uses_the_defocus_noise_and_flags_a_noisier_stack():
    from napari_cvdm.uncertainty.ood import DEFOCUS_NOISE_MARGIN

    rng = np.random.default_rng(13)
    x = np.mgrid[:64, :64][1] / 9.0

    def stacks(n, noise):
        contrast = 0.2 * np.sin(x)  # a smooth phase object: ±contrast between the planes
        return [np.stack([1 - contrast, 1 + contrast]) + noise * rng.normal(size=(2, 64, 64)) for _ in range(n)]

    stds = [0.01 * rng.uniform(0.5, 1.5, (64, 64)) for _ in range(8)]
    summary = summarize_distribution(stds, stacks(8, 0.05), 0.2, task="qpi")
    assert set(summary.features) == {"std_p50", "std_p90", "defocus_noise"}
    low, _, high = summary.features["defocus_noise"]
    assert 0.04 < low <= high < 0.06  # the estimate reads the true std of a smooth object
    assert check_in_distribution(summary, stds[0], stacks(1, 0.05)[0], 0.2) is None
    noisier = stacks(1, 0.05 * DEFOCUS_NOISE_MARGIN * 1.3)[0]
    assert "noise level of the defocus stack" in check_in_distribution(summary, stds[0], noisier, 0.2)
    # several planes (T, 2, H, W): the median over the stacks
    assert check_in_distribution(summary, stds[0], np.stack(stacks(3, 0.05)), 0.2) is None
    # a summary written before this feature existed ("noise") is still checked with its own feature
    old = DistributionSummary.from_dict({"n_images": 8, "features": {"noise": [1e-4, 1e-4, 2e-4],
                                                                     "unknown": [1, 2, 3]}})
    warning = check_in_distribution(old, stds[0], stacks(1, 0.05)[0], 0.2)
    assert "noise level relative to the input's intensity range" in warning and "unknown" not in warning
