import numpy as np
import pytest

from napari_cvdm.data.datasets import load_pair_folders
from napari_cvdm.data.simulate import (
    PHOTO_KIND,
    SR_TRAIN,
    SR_UNSEEN_TEST,
    STRUCTURE_KINDS,
    UNSEEN_STRUCTURE_KINDS,
    QPISimulationConfig,
    SimulatedPairs,
    StructureSettings,
    natural_image_names,
    phase_object_stack,
    qpi_source_image,
    render_structure,
    simulate_qpi,
    simulate_sr,
    split_source_files,
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


# ----------------------------------------------------------------------------- defaults unchanged


def test_default_streams_give_the_same_images_as_before_the_unseen_test_sets():
    # Sums of seeded draws recorded with the code of commit e5e9dba (before source folders,
    # structure settings and the unseen SR configuration existed).
    before = {
        "qpi": ([1916.3066833438352, 1777.2352191017708, 1680.5957443322986],
                [2051.3681187443435, 2052.76096732571, 2048.9824071526527]),
        "sr": ([18748.392126321793, 2554.2482012808323, 26679.36317873001],
               [122381.22343444824, 107213.63806915283, 133612.78772735596]),
    }  # fmt: skip
    for task, (targets, inputs) in before.items():
        pairs = SimulatedPairs(task, 32, seed=3, split="test").take(3)
        assert [p.target.astype(np.float64).sum() for p in pairs] == pytest.approx(targets, rel=1e-6)
        assert [p.input.astype(np.float64).sum() for p in pairs] == pytest.approx(inputs, rel=1e-6)
    assert SR_TRAIN == simulate_sr.__defaults__[2] and SR_TRAIN.structures == StructureSettings()


# ----------------------------------------------------------------------------- photos from a folder


def write_photos(folder, n, shape=(40, 56)):
    """``n`` tiny distinct grayscale PNGs ``photo_XX.png`` (and a non-image file) in ``folder``."""
    from skimage.io import imsave

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        imsave(folder / f"photo_{i:02d}.png", (rng.random(shape) * 255).astype(np.uint8), check_contrast=False)
    (folder / "README.md").write_text("not an image")
    return folder


def test_source_split_is_by_file_disjoint_complete_deterministic_and_stable(tmp_path):
    folder = write_photos(tmp_path / "photos", 60, shape=(8, 8))
    split = split_source_files(folder)
    names = [p.name for files in split.values() for p in files]
    assert sorted(names) == [f"photo_{i:02d}.png" for i in range(60)]  # every image once, README ignored
    assert len(split["train"]) > 3 * len(split["test"]) > 0 and split["validation"]
    assert split == split_source_files(folder)
    assert split != split_source_files(folder, seed=1)
    write_photos(tmp_path / "photos", 90, shape=(8, 8))  # the folder gains 30 photos: none of the old ones moves
    grown = split_source_files(folder)
    for key, files in split.items():
        assert set(files) <= set(grown[key])
    with pytest.raises(ValueError, match="fractions"):
        split_source_files(folder, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="no images"):
        split_source_files(tmp_path)


@pytest.mark.parametrize("n", [3, 5, 12, 30])
def test_a_small_folder_still_gets_a_photo_in_every_split(tmp_path, n):
    split = split_source_files(write_photos(tmp_path / "photos", n, shape=(8, 8)))
    assert all(split.values()) and sum(len(files) for files in split.values()) == n


def test_pairs_from_a_folder_use_only_their_splits_photos(tmp_path):
    folder = write_photos(tmp_path / "photos", 30)
    split = {key: {p.name for p in files} for key, files in split_source_files(folder).items()}

    def sources(stream, n):
        return [pair.name.split("-", 4)[-1] for pair in stream.take(n)]

    test = sources(SimulatedPairs("qpi", 32, seed=1, split="test", source_dir=folder), 6)
    assert set(test) <= split["test"]  # photos only, never a training photo
    assert len(set(test)) == min(6, len(split["test"]))  # distinct photos first
    assert set(sources(SimulatedPairs("qpi", 32, split="validation", source_dir=folder), 6)) <= split["validation"]
    train = sources(SimulatedPairs("qpi", 32, source_dir=folder), 40)
    photos = {name for name in train if name.startswith("photo_")}
    assert photos and photos <= split["train"] and set(train) - photos <= {"gaussian_field", "blobs", "cells"}
    assert set(train) - photos  # the training default mixes in textures (natural_image_fraction 0.5)
    only_photos = sources(SimulatedPairs("qpi", 32, source_dir=folder, natural_fraction=1.0), 10)
    assert set(only_photos) <= split["train"]
    seen = sources(SimulatedPairs("qpi", 32, split="test", source_dir=folder, source_split="train"), 10)
    assert {n for n in seen if n.startswith("photo_")} <= split["train"]


def test_sr_pairs_from_a_folder_add_its_splits_photos_as_a_structure_family(tmp_path):
    folder = write_photos(tmp_path / "photos", 30)
    split = {key: {p.name for p in files} for key, files in split_source_files(folder).items()}
    train = [p.name.split("-", 4)[-1] for p in SimulatedPairs("sr", 32, source_dir=folder, balanced_kinds=True).take(10)]
    assert train[:4] == list(STRUCTURE_KINDS) and train[5:9] == list(STRUCTURE_KINDS)
    assert {train[4], train[9]} <= split["train"]  # every fifth pair is a training photo
    validation = SimulatedPairs("sr", 32, split="validation", source_dir=folder, balanced_kinds=True).take(5)
    assert validation[4].name.split("-", 4)[-1] in split["validation"]
    sample = simulate_sr(np.random.default_rng(0), 32, kind=PHOTO_KIND,
                         source_files=sorted(folder.iterdir()))
    assert sample.kind == PHOTO_KIND and sample.source.startswith("photo_") and sample.target.min() >= 0
    with pytest.raises(ValueError, match="photo structure kind needs source_files"):
        simulate_sr(np.random.default_rng(0), 32, kind=PHOTO_KIND)
    # without a folder, the default SR stream is unchanged: the four training families only
    assert {p.name.rsplit("-", 1)[-1] for p in SimulatedPairs("sr", 32).take(12)} <= set(STRUCTURE_KINDS)


def test_a_photo_smaller_than_the_crop_is_upsampled_not_mirrored(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "ramp"
    folder.mkdir()
    ramp = np.tile(np.arange(24, dtype=np.uint8) * 10, (20, 1))  # brightness rises left to right
    imsave(folder / "ramp.png", ramp, check_contrast=False)
    for seed in range(5):
        image, name = qpi_source_image(np.random.default_rng(seed), 64, 1.0, [folder / "ramp.png"])
        assert name == "ramp.png" and image.shape == (64, 64)
        # Inside the photo a bilinear ramp stays linear: no mirrored fold (a second extremum).
        gy, gx = np.gradient(image)
        direction = np.array([gy.mean(), gx.mean()]) / np.hypot(gy.mean(), gx.mean())
        along = gy * direction[0] + gx * direction[1]
        assert np.mean(along > -1e-6) > 0.99


@pytest.mark.parametrize("task", ["sr", "qpi"])
def test_written_test_split_folders_name_their_source(tmp_path, task):
    folder = write_photos(tmp_path / "photos", 30) if task == "qpi" else None
    config = SR_UNSEEN_TEST if task == "sr" else SR_TRAIN
    inputs, _ = write_simulated_folders(tmp_path / "out", task, 2, size=32, seed=0, sr_config=config,
                                        split="test", source_dir=folder)  # fmt: skip
    test = {p.stem for p in split_source_files(folder)["test"]} if folder else None
    for path in sorted(inputs.iterdir()):
        label = path.stem.split("_", 2)[-1]
        assert label in test if task == "qpi" else label in SR_UNSEEN_TEST.kinds


# ----------------------------------------------------------------------------- SR unseen settings


def _ranges(config):
    """Every (low, high) setting of an SR configuration by name, structures included."""
    out = {name: value for name, value in vars(config).items() if isinstance(value, tuple) and name != "kinds"}
    out.update({name: value for name, value in vars(config.structures).items() if isinstance(value, tuple)})
    return out


def test_unseen_sr_settings_lie_outside_the_training_ranges_and_add_held_out_families():
    train, test = _ranges(SR_TRAIN), _ranges(SR_UNSEEN_TEST)
    held_out_only = {name for name in train if name.startswith(("nucleus", "mitochondria"))}
    changed = {name for name in train if train[name] != test[name]}
    assert changed == set(train) - held_out_only  # every training-structure range and optics/SNR range moved
    for name in changed:
        (a, b), (c, d) = train[name], test[name]
        # integers(low, high) excludes high: (2, 7) and (7, 12) share no value
        assert d <= a or c >= b, f"{name}: unseen {test[name]} overlaps training {train[name]}"
    assert 1.0 <= SR_UNSEEN_TEST.na_range[0] and SR_UNSEEN_TEST.na_range[1] <= 1.49  # physical immersion NA
    assert SR_UNSEEN_TEST.structures.width_scale != SR_TRAIN.structures.width_scale
    assert set(UNSEEN_STRUCTURE_KINDS) <= set(SR_UNSEEN_TEST.kinds)
    assert not set(UNSEEN_STRUCTURE_KINDS) & set(SR_TRAIN.kinds)


@pytest.mark.parametrize("kind", UNSEEN_STRUCTURE_KINDS)
def test_held_out_families_render_seeded_non_negative_densities(kind):
    density = render_structure(kind, (128, 128), 0.0313, np.random.default_rng(1))
    np.testing.assert_array_equal(density, render_structure(kind, (128, 128), 0.0313, np.random.default_rng(1)))
    assert density.min() >= 0 and density.max() > 0
    sample = simulate_sr(np.random.default_rng(2), 64, kind=kind, config=SR_UNSEEN_TEST)
    assert sample.kind == kind and 1.15 <= sample.na <= 1.28 and sample.peak_photons >= 1500


def test_nucleus_is_a_dense_blob_and_mitochondria_wide_tubes_unlike_the_training_structures():
    from scipy.ndimage import binary_erosion

    def survives_erosion(kind, pixels):  # share of the bright area left after eroding it by `pixels`
        density = render_structure(kind, (256, 256), 0.0313, np.random.default_rng(3))
        bright = density > 0.1 * np.percentile(density, 99.5)
        return binary_erosion(bright, iterations=pixels).sum() / bright.sum()

    assert survives_erosion("nucleus", 5) > 0.3  # filled over hundreds of nm
    assert survives_erosion("mitochondria", 2) > 0.4  # tubes wider than 4 px (125 nm)
    for kind in STRUCTURE_KINDS:  # thin lines and small rings
        assert survives_erosion(kind, 5) < 0.05 and survives_erosion(kind, 2) < 0.2


def test_balanced_kinds_take_every_structure_in_turn():
    pairs = SimulatedPairs("sr", 32, split="test", sr_config=SR_UNSEEN_TEST, balanced_kinds=True).take(6)
    assert [p.name.rsplit("-", 1)[-1] for p in pairs] == list(SR_UNSEEN_TEST.kinds)
