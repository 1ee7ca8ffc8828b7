import json

import numpy as np
import pytest

from napari_cvdm.data.normalize import Normalizer
from napari_cvdm.errors import InputError


def test_fixed_maps_the_range_to_minus_one_one_and_back():
    norm = Normalizer.fixed(0.0, 3.5)
    phase = np.array([[0.0, 1.75, 3.5]], dtype=np.float32)
    np.testing.assert_allclose(norm.normalize(phase), [[-1.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(norm.denormalize(norm.normalize(phase)), phase, atol=1e-6)
    assert norm.normalize(phase).dtype == np.float32


def test_fit_percentile_is_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(0, 10, (64, 64)), rng.uniform(100, 300, (64, 64))]).astype(np.float32)
    norm = Normalizer.fit_percentile(image, 1.0, 99.0)
    assert norm.low[0] == pytest.approx(np.percentile(image[0], 1.0))
    assert norm.high[1] == pytest.approx(np.percentile(image[1], 99.0))
    out = norm.normalize(image)
    for channel in out:
        assert np.mean(channel < -1) == pytest.approx(0.01, abs=0.003)
        assert np.mean(channel > 1) == pytest.approx(0.01, abs=0.003)
    np.testing.assert_allclose(norm.denormalize(out), image, rtol=1e-5, atol=1e-3)
    # Defaults suit fluorescence: 0.1 / 99.9 percentiles.
    assert (Normalizer.fit_percentile(image).low_pct, Normalizer.fit_percentile(image).high_pct) == (0.1, 99.9)


def test_per_image_recipes_fit_each_image():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (1, 32, 32)).astype(np.float32)
    recipe = Normalizer.per_image_percentile(0.0, 100.0)
    np.testing.assert_allclose(recipe.normalize(image), recipe.normalize(5 * image + 7), atol=1e-5)
    assert recipe.normalize(image).min() == pytest.approx(-1.0) and recipe.normalize(image).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fit"):
        recipe.denormalize(image)
    fitted = recipe.fit(5 * image + 7)
    np.testing.assert_allclose(fitted.denormalize(recipe.normalize(image)), 5 * image + 7, rtol=1e-5)

    stack = np.stack([np.full((8, 8), 0.5), np.full((8, 8), 1.5)]).astype(np.float32)  # mean 1
    mean_norm = Normalizer.per_image_mean()
    # Same scale for both planes: I / mean − 1.
    np.testing.assert_allclose(mean_norm.normalize(stack), stack - 1.0, atol=1e-6)
    np.testing.assert_allclose(mean_norm.normalize(3 * stack), stack - 1.0, atol=1e-6)


def test_round_trips_through_json():
    for norm in (
        Normalizer.fixed([0.0, 1.0], [3.5, 2.0]),
        Normalizer.per_image_percentile(0.5, 99.5),
        Normalizer.per_image_mean(),
    ):
        restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
        assert restored == norm


def test_constant_image_is_rejected():
    with pytest.raises(InputError, match="constant"):
        Normalizer.per_image_percentile().normalize(np.ones((1, 8, 8)))



def test_channel_count_must_match_or_be_one():
    image = np.ones((3, 4, 4), dtype=np.float32)
    assert Normalizer.fixed(0.0, 2.0).normalize(image).shape == (3, 4, 4)  # one range for all channels
    with pytest.raises(ValueError, match="channels"):
        Normalizer.fixed([0.0, 0.0], [1.0, 2.0]).normalize(image)
