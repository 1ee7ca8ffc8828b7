"""A training run's data: sources, validation split, patch size, normalisation, patches, pixel size."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_cvdm.config import TrainConfig
from napari_cvdm.data import DataError, ImagePair, get_task
from napari_cvdm.data.training import (
    TrainingData, folder_pixel_size, load_training_data, receptive_field, unet_reach,
)
from napari_cvdm.errors import InputError
from napari_cvdm.io import write_image

torch.set_num_threads(1)


def ramp(shape, offset=0.0):
    """A non-symmetric image: every pixel value is unique."""
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / np.prod(shape) + offset).astype(np.float32)


def doubled_pairs(n, size):
    """Pairs whose target is twice the input, pixel by pixel."""
    return [ImagePair(f"img{i}", ramp((1, size, size), i), 2 * ramp((1, size, size), i)) for i in range(n)]


def patches_of(pairs, seed, draws=1, batch_size=5):
    area = np.array([p.shape[0] * p.shape[1] for p in pairs], dtype=np.float64)
    data = TrainingData(get_task("sr"), pairs, None, "test", None, area / area.sum())
    rng = np.random.default_rng(seed)
    return [data.draw_patches(batch_size, 16, rng) for _ in range(draws)]


def test_patches_are_aligned_seeded_and_drawn_anew_each_time():
    # was test_loader_yields_aligned_normalised_tensor_batches (datasets.make_loader, removed)
    (x_in, x_target), (again_in, _) = patches_of(doubled_pairs(3, 48), seed=0, draws=2)
    assert x_in.shape == (5, 1, 16, 16) and x_target.shape == (5, 1, 16, 16)
    assert x_in.dtype == np.float32 and x_target.dtype == np.float32
    np.testing.assert_allclose(x_target, 2 * x_in, rtol=1e-6)  # flips and rotations keep the pair aligned
    np.testing.assert_array_equal(patches_of(doubled_pairs(3, 48), seed=0)[0][0], x_in)
    assert not np.array_equal(again_in, x_in)


def test_patches_come_from_the_images_in_proportion_to_their_area():
    pairs = [ImagePair("small", np.zeros((1, 16, 16), np.float32), np.zeros((1, 16, 16), np.float32)),
             ImagePair("large", np.ones((1, 48, 48), np.float32), np.ones((1, 48, 48), np.float32))]
    x_in, _ = patches_of(pairs, seed=1, batch_size=400)[0]
    assert abs(x_in[:, 0, 0, 0].mean() - 0.9) < 0.05  # area 2304 of 2560


@pytest.mark.parametrize("task, channels", [("sr", 1), ("qpi", 2)])
def test_simulated_data_are_normalised_with_held_out_validation_patches(task, channels):
    # was test_loader_takes_an_endless_simulated_stream: training draws a fixed set from the stream
    config = TrainConfig(task=task, simulated_images=3, simulated_size=32, patch_size=16, formulation="paper",
                         validation_fraction=0.3)
    data = load_training_data(config)
    assert len(data.train_pairs) == 3 and len(data.validation_pairs) == 1
    x_in, x_target = data.draw_patches(2, 16, np.random.default_rng(0))
    assert x_in.shape == (2, channels, 16, 16) and x_target.shape == (2, 1, 16, 16)
    assert np.isfinite(x_in).all() and np.isfinite(x_target).all()
    y, x0 = data.validation
    assert y.shape == (4, channels, 16, 16) and x0.shape == (4, 1, 16, 16)
    if task == "sr":  # per-image percentiles: each image's 0.1 and 99.9 percentiles map to −1 and 1
        for pair in data.train_pairs:
            for image in (pair.input, pair.target):
                np.testing.assert_allclose(np.percentile(image, [0.1, 99.9]), [-1, 1], atol=1e-3)


def test_in_memory_pairs_are_split_by_image_and_described():
    images = [ramp((32, 32), i) for i in range(5)]
    config = TrainConfig(task="sr", patch_size=16, validation_fraction=0.2, formulation="paper")
    data = load_training_data(config, pairs=(images, [2 * image for image in images]))
    assert len(data.train_pairs) == 4 and len(data.validation_pairs) == 1
    assert data.description == "5 in-memory image pair(s)"
    np.testing.assert_allclose(data.probabilities, 0.25)


def test_small_images_and_wrong_channels_are_refused_before_training():
    # was test_loader_rejects_wrong_channels_and_small_images
    small = [ramp((8, 8))] * 2
    with pytest.raises(InputError, match="smaller than the patch size 16"):
        load_training_data(TrainConfig(task="sr", patch_size=16, validation_fraction=0.0), pairs=(small, small))
    one_plane = [ramp((32, 32))] * 2
    with pytest.raises(DataError, match="image 0 \\(input\\).*needs 2 planes"):
        load_training_data(TrainConfig(task="qpi", patch_size=16), pairs=(one_plane, one_plane))
    with pytest.raises(InputError, match="generic model needs data"):
        load_training_data(TrainConfig(task="generic"))


@pytest.mark.parametrize("task", ["sr", "qpi"])
def test_a_folder_without_photos_is_refused_by_name(tmp_path, task):
    with pytest.raises(InputError, match="source_images: no images .* in"):
        load_training_data(TrainConfig(task=task, simulated_images=2, simulated_size=32,
                                       source_images=str(tmp_path)))


def test_folder_pixel_size_is_the_targets_times_the_factor_else_the_inputs(tmp_path):
    inputs, targets = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    targets.mkdir()
    write_image(inputs / "a.tif", ramp((16, 16)), pixel_size_um=0.1)
    write_image(targets / "a.tif", ramp((32, 32)), pixel_size_um=0.05)
    assert folder_pixel_size(inputs, targets, 2) == pytest.approx(0.1)
    write_image(targets / "a.tif", ramp((32, 32)))  # no target pixel size: the raw input's
    assert folder_pixel_size(inputs, targets, 2) == pytest.approx(0.1)
    write_image(inputs / "a.tif", ramp((32, 32)), pixel_size_um=0.05)  # input already on the target grid
    assert folder_pixel_size(inputs, targets, 2) == pytest.approx(0.1)
    write_image(inputs / "a.tif", ramp((32, 32)))
    assert folder_pixel_size(inputs, targets, 2) is None


def test_a_single_pair_holds_out_a_band_farther_than_the_receptive_field():
    # 'auto': one image cannot give a whole validation image, so a band of it is held out
    image = ramp((300, 40))
    config = TrainConfig(task="sr", preset="tiny", patch_size=32, formulation="paper")
    data = load_training_data(config, pairs=([image], [2 * image]))
    reach = receptive_field("tiny", "none")
    (band,) = data.split["bands"]
    assert data.split["kind"] == "region" and data.split["gap_px"] == reach + 1
    assert band["axis"] == 0 and band["band_start"] - band["train_stop"] == reach + 1
    assert band["extent"] - band["band_start"] == 32  # at least a patch (10 % of 300 is less)
    assert data.train_pairs[0].shape == (band["train_stop"], 40)
    np.testing.assert_array_equal(data.validation_pairs[0].target[0], 2 * image[band["band_start"]:])
    assert data.validation is not None and "band" in data.split["words"] and f"{reach} px" in data.split["words"]


def test_the_split_can_be_chosen_and_separate_validation_pairs_given():
    images = [ramp((300, 40), i) for i in range(3)]
    pairs = (images, [2 * image for image in images])
    config = TrainConfig(task="sr", preset="tiny", patch_size=32, formulation="paper", validation_fraction=0.34)
    assert load_training_data(config, pairs=pairs).split["kind"] == "image"
    region = load_training_data(dataclasses.replace(config, validation_split="region"), pairs=pairs)
    assert region.split["kind"] == "region" and len(region.validation_pairs) == 3
    given = load_training_data(config, pairs=pairs, validation=([images[0]], [2 * images[0]]))
    assert given.split["kind"] == "given" and len(given.train_pairs) == 3 and len(given.validation_pairs) == 1
    with pytest.raises(DataError, match="too small to hold out a validation band: it needs"):
        load_training_data(config, pairs=([ramp((120, 120))], [ramp((120, 120))]))


def test_the_receptive_field_is_where_a_pixel_stops_changing_an_output():
    """unet_reach bounds the reach of the convolutions (GroupNorm and attention, which reach the whole
    tile, replaced by identities) and equals it for the image input."""
    from torch import nn

    from napari_cvdm.model.unet import DENOISER_PRESETS, UNet

    torch.manual_seed(0)
    net = UNet(2, 1, DENOISER_PRESETS["tiny"], gamma_channels=1)
    net.mid_attention = nn.Identity()
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    size, reach = 193, unet_reach(DENOISER_PRESETS["tiny"])
    for centre in (96, 97, 98, 99):
        x = torch.randn(1, 2, size, size, requires_grad=True)
        gamma = torch.rand(1, 1, size, size, requires_grad=True)
        net(x, gamma)[0, 0, centre, centre].backward()
        rows_x = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()[:, 0] - centre
        rows_gamma = gamma.grad.abs().sum(dim=(0, 1, 3)).nonzero()[:, 0] - centre
        assert rows_x.abs().max() <= reach and rows_gamma.abs().max() <= reach
    assert rows_x.abs().max() >= reach - 5  # the bound is close
    assert receptive_field("tiny", "predictor") == 2 * reach and receptive_field("tiny", "physics") == reach
