import numpy as np
import pytest

from napari_cvdm.physics.noise import finest_haar_noise_std


def test_finest_haar_noise_std_measures_white_noise_on_a_smooth_image():
    rng = np.random.default_rng(10)
    y, x = np.mgrid[:128, :128]
    smooth = 10 * np.sin(x / 15.0) * np.cos(y / 20.0)
    assert finest_haar_noise_std(smooth + 0.3 * rng.normal(size=smooth.shape)) == pytest.approx(0.3, rel=0.05)

