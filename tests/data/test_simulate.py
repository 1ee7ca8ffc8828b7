import numpy as np
import pytest

from napari_cvdm.data.datasets import load_pair_folders
from napari_cvdm.data.simulate import (
    STRUCTURE_KINDS,
    QPISimulationConfig,
    SimulatedPairs,
    natural_image_names,
    phase_object_stack,
    qpi_source_image,
    render_structure,
    simulate_qpi,
    simulate_sr,
    write_simulated_folders,
)
from napari_cvdm.physics.optics import frequency_grid


def radial_power(image, pixel_um):
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    fy, fx = frequency_grid(image.shape, pixel_um)
    return power, np.sqrt(fx**2 + fy**2)


def test_widefield_has_no_power_above_the_cutoff_beyond_noise_and_the_target_twice_the_band():
    sample = simulate_sr(np.random.default_rng(0), 256, kind="microtubule", peak_photons=2000)
    cutoff = 2 * sample.na / sample.wavelength_um  # cycles/µm
    assert sample.widefield.shape == (128, 128) and sample.target.shape == (256, 256)

    power, f = radial_power(sample.widefield.astype(np.float64), sample.camera_pixel_um)
    # White-noise floor of the FFT power: Σ_i var_i = Σ_i (Poisson mean_i + read²), mean_i ≈ data − offset.
    floor = np.sum(sample.widefield - sample.offset_adu) + sample.widefield.size * 1.5**2
    assert power[f > 1.05 * cutoff].mean() / floor == pytest.approx(1.0, abs=0.1)
    assert power[(f > 0) & (f < 0.5 * cutoff)].mean() > 100 * floor

    power, f = radial_power(sample.target.astype(np.float64), sample.target_pixel_um)
    in_band = power[(f > 0) & (f < 0.5 * cutoff)].mean()
    assert power[(f > 1.1 * cutoff) & (f < 1.9 * cutoff)].mean() > 1e-5 * in_band  # beyond the widefield band
    assert power[f > 2.0 * cutoff].mean() < 1e-12 * in_band
    # The band edge (last frequency with non-negligible power) is at about twice the widefield cut-off.
    edges = np.linspace(0, f.max(), 200)
    index = np.digitize(f.ravel(), edges)
    sums = np.bincount(index, weights=power.ravel(), minlength=len(edges) + 1)
    counts = np.bincount(index, minlength=len(edges) + 1)
    binned = sums / np.maximum(counts, 1)  # mean power in [edges[i-1], edges[i])
    edge = edges[np.flatnonzero(binned > 1e-10 * in_band)[-1]]
    assert 1.9 * cutoff <= edge <= 2.05 * cutoff


@pytest.mark.parametrize("kind", STRUCTURE_KINDS)
def test_every_structure_kind_renders_seeded_non_negative_periodic_densities(kind):
    density = render_structure(kind, (96, 96), 0.0313, np.random.default_rng(1))
    again = render_structure(kind, (96, 96), 0.0313, np.random.default_rng(1))
    other = render_structure(kind, (96, 96), 0.0313, np.random.default_rng(2))
    np.testing.assert_array_equal(density, again)
    assert not np.allclose(density, other)
    assert density.min() >= 0 and density.max() > 0
    # Structures are sparse: most of the field is darker than a tenth of the peak.
    assert np.mean(density < 0.1 * density.max()) > 0.3


def test_sr_sample_is_seeded_noisy_and_in_photons():
    a = simulate_sr(np.random.default_rng(3), 64, kind="ccp", peak_photons=500)
    b = simulate_sr(np.random.default_rng(3), 64, kind="ccp", peak_photons=500)
    np.testing.assert_array_equal(a.widefield, b.widefield)
    assert a.widefield.dtype == np.float32 and a.target.dtype == np.float32
    assert a.camera_pixel_um == pytest.approx(2 * a.target_pixel_um)
    signal = a.widefield - a.offset_adu - a.background_photons
    assert signal.max() == pytest.approx(500, rel=0.3)  # peak photons, plus Poisson noise
    pair = a.pair("x")
    assert pair.input.shape == (1, 64, 64) and pair.target.shape == (1, 64, 64)


def test_qpi_sample_follows_the_paper_setup():
    rng = np.random.default_rng(4)
    source = rng.random((64, 64))
    clean = simulate_qpi(rng, 64, source=source, noise_std=0.0)
    config = QPISimulationConfig()
    assert (config.wavelength_um, config.pixel_um, config.dz_um, config.phase_max_rad) == (0.521, 0.21, 1.0, 3.5)
    assert clean.phase.min() == pytest.approx(0.0) and clean.phase.max() == pytest.approx(3.5)
    np.testing.assert_allclose(clean.stack, phase_object_stack(clean.phase, 1.0, 0.521, 0.21), atol=1e-5)
    assert clean.stack.mean() == pytest.approx(1.0, abs=1e-4)  # energy conservation, unit illumination

    noisy = simulate_qpi(np.random.default_rng(5), 64, source=source, noise_std=0.1)
    assert np.std(noisy.stack - clean.stack) == pytest.approx(0.1, rel=0.05)
    assert np.mean(noisy.stack - clean.stack) == pytest.approx(0.0, abs=0.01)  # no offset by default
    offset = simulate_qpi(np.random.default_rng(5), 64, source=source, noise_std=0.1,
                          config=QPISimulationConfig(noise_offset=True))  # fmt: skip
    assert np.mean(offset.stack - clean.stack) == pytest.approx(0.1, abs=0.01)

    stds = [simulate_qpi(rng, 16).noise_std for _ in range(200)]
    assert 0.0 <= min(stds) < 0.02 and 0.18 < max(stds) <= 0.2


def test_qpi_sources_are_offline_images_and_textures_in_unit_range():
    names = natural_image_names()
    assert {"camera", "astronaut", "coins"} <= set(names)
    rng = np.random.default_rng(6)
    kinds = set()
    for _ in range(30):
        image, name = qpi_source_image(rng, 48)
        kinds.add(name)
        assert image.shape == (48, 48) and image.min() == 0.0 and image.max() == pytest.approx(1.0)
    assert kinds & set(names) and kinds & {"gaussian_field", "blobs", "cells"}


@pytest.mark.parametrize("task, channels", [("sr", 1), ("qpi", 2)])
def test_simulated_stream_is_seeded_endless_and_splits_never_overlap(task, channels):
    stream = SimulatedPairs(task, size=32, seed=7)
    first = stream.take(3)
    assert [p.input.shape for p in first] == [(channels, 32, 32)] * 3
    assert all(p.target.shape == (1, 32, 32) for p in first)
    again = SimulatedPairs(task, size=32, seed=7).take(3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.target, b.target)
    later = stream.take(3)
    validation = stream.with_split("validation").take(3)
    seen = [p.target.tobytes() for p in first + later + validation]
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("task", ["sr", "qpi"])
def test_written_folders_load_back_as_pairs(tmp_path, task):
    inputs, targets = write_simulated_folders(tmp_path, task, n_images=2, size=32, seed=0)
    pairs = load_pair_folders(inputs, targets, task)
    assert len(pairs) == 2
    assert pairs[0].input.shape[-2:] == pairs[0].target.shape[-2:] == (32, 32)
    assert pairs[0].input.shape[0] == (1 if task == "sr" else 2)
