import numpy as np
import pytest
import tifffile
import torch

from napari_cvdm.data.datasets import (
    DataError,
    ImagePair,
    load_pair_folders,
    make_validation_set,
    pairs_from_arrays,
    prepare_input,
    raw_pixel_size,
    random_dihedral,
    random_patch,
    split_by_image,
)
from napari_cvdm.data.normalize import Normalizer

torch.set_num_threads(1)
IDENTITY = Normalizer.fixed(-1.0, 1.0)  # maps [-1, 1] onto itself: lets tests see raw values


def ramp(shape, offset=0.0):
    """A non-symmetric image: every pixel value is unique."""
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / np.prod(shape) + offset).astype(np.float32)


@pytest.fixture
def folders(tmp_path):
    inputs, targets = tmp_path / "inputs", tmp_path / "targets"
    inputs.mkdir()
    targets.mkdir()
    return inputs, targets


def write(path, array):
    tifffile.imwrite(path, np.asarray(array, dtype=np.float32), photometric="minisblack")


# ----------------------------------------------------------------------------- pairing and reading


def test_pairs_are_matched_by_file_name_not_order(folders):
    inputs, targets = folders
    # Listing order differs between the folders, and extensions differ.
    for index, name in enumerate(["b", "a", "c"]):
        write(inputs / f"{name}.tif", ramp((32, 32), offset=index))
        write(targets / (f"{name}.tiff" if name != "c" else f"{name}.tif"), 10 * ramp((32, 32), offset=index))
    pairs = load_pair_folders(inputs, targets, "sr")
    assert [p.name for p in pairs] == ["a", "b", "c"]
    for pair in pairs:
        np.testing.assert_allclose(pair.target, 10 * pair.input, rtol=1e-5)
        assert pair.input.dtype == np.float32 and pair.input.shape == (1, 32, 32)


def test_sr_raw_widefield_at_half_size_is_upsampled_to_the_target_grid(folders):
    inputs, targets = folders
    write(inputs / "cell.tif", 5.0 + ramp((16, 16)))
    write(targets / "cell.tif", ramp((32, 32)))
    (pair,) = load_pair_folders(inputs, targets, "sr")
    assert pair.input.shape == (1, 32, 32)
    assert pair.input.mean() == pytest.approx(5.0 + ramp((16, 16)).mean(), rel=1e-5)


def test_stacks_are_read_plane_by_plane(folders):
    inputs, targets = folders
    write(inputs / "s.tif", np.stack([ramp((16, 16), k) for k in range(3)]))
    write(targets / "s.tif", np.stack([2 * ramp((16, 16), k) for k in range(3)]))
    pairs = load_pair_folders(inputs, targets, "sr")
    assert [p.name for p in pairs] == ["s[0]", "s[1]", "s[2]"]
    for pair in pairs:
        np.testing.assert_allclose(pair.target, 2 * pair.input, rtol=1e-5)


def test_qpi_inputs_are_two_plane_stacks(folders):
    inputs, targets = folders
    write(inputs / "q.tif", np.stack([ramp((16, 16)), ramp((16, 16), 1.0)]))
    write(targets / "q.tif", ramp((16, 16)))
    (pair,) = load_pair_folders(inputs, targets, "qpi")
    assert pair.input.shape == (2, 16, 16) and pair.target.shape == (1, 16, 16)


# ----------------------------------------------------------------------------- errors


def test_missing_partners_are_reported_by_file_name(folders):
    inputs, targets = folders
    write(inputs / "a.tif", ramp((8, 8)))
    write(targets / "a.tif", ramp((8, 8)))
    write(inputs / "lonely_input.tif", ramp((8, 8)))
    with pytest.raises(DataError, match="lonely_input.tif"):
        load_pair_folders(inputs, targets, "sr")
    (inputs / "lonely_input.tif").unlink()
    write(targets / "lonely_target.tif", ramp((8, 8)))
    with pytest.raises(DataError, match="lonely_target.tif"):
        load_pair_folders(inputs, targets, "sr")


@pytest.mark.parametrize(
    "case, task, input_image, target_image, message",
    [
        ("shape", "sr", ramp((20, 20)), ramp((32, 32)), "does not match"),
        ("shape", "qpi", np.stack([ramp((16, 16)), ramp((16, 16))]), ramp((32, 32)), "does not match"),
        ("channels", "qpi", ramp((16, 16)), ramp((16, 16)), "2 planes"),
        ("channels", "qpi", np.stack([ramp((16, 16))] * 3), ramp((16, 16)), "2 planes"),
        ("planes", "sr", np.stack([ramp((16, 16))] * 3), np.stack([ramp((16, 16))] * 2), "has 3 image"),
        ("nan", "sr", np.where(ramp((16, 16)) > 0.5, np.nan, ramp((16, 16))), ramp((16, 16)), "NaN"),
        ("inf", "sr", np.where(ramp((16, 16)) > 0.5, np.inf, ramp((16, 16))), ramp((16, 16)), "Inf"),
        ("constant", "sr", np.full((16, 16), 3.0), ramp((16, 16)), "constant"),
        ("constant target", "sr", ramp((16, 16)), np.zeros((16, 16)), "constant"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(folders, case, task, input_image, target_image, message):
    inputs, targets = folders
    write(inputs / "good.tif", ramp((16, 16)) if task == "sr" else np.stack([ramp((16, 16))] * 2))
    write(targets / "good.tif", ramp((16, 16)))
    write(inputs / "bad_one.tif", input_image)
    write(targets / "bad_one.tif", target_image)
    with pytest.raises(DataError, match=message) as info:
        load_pair_folders(inputs, targets, task)
    assert "bad_one.tif" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_images_and_folders_are_reported(folders):
    inputs, targets = folders
    with pytest.raises(DataError, match="no .tif"):
        load_pair_folders(inputs, targets, "sr")
    with pytest.raises(DataError, match="layer 7.*empty"):
        pairs_from_arrays([np.zeros((0, 5), np.float32)], [ramp((4, 4))], "sr", names=["layer 7"])
    (inputs / "empty.tif").write_bytes(b"")  # e.g. an interrupted copy
    write(targets / "empty.tif", ramp((16, 16)))
    with pytest.raises(DataError, match="empty.tif"):
        load_pair_folders(inputs, targets, "sr")


def test_in_memory_arrays_are_checked_and_named():
    pairs = pairs_from_arrays([ramp((8, 8)), ramp((8, 8), 1)], [ramp((16, 16)), ramp((16, 16))], "sr", ["wf1", "wf2"])
    assert [p.name for p in pairs] == ["wf1", "wf2"] and pairs[0].input.shape == (1, 16, 16)
    with pytest.raises(DataError, match="my layer"):
        pairs_from_arrays([ramp((8, 8))], [ramp((9, 9))], "sr", ["my layer"])
    with pytest.raises(DataError, match="2 input images but 1"):
        pairs_from_arrays([ramp((8, 8))] * 2, [ramp((8, 8))], "sr")


def test_prepare_input_brings_a_raw_image_to_the_model_grid():
    assert prepare_input(ramp((16, 16)), "sr").shape == (1, 32, 32)
    assert prepare_input(ramp((16, 16)), "sr", upsampled=True).shape == (1, 16, 16)
    assert prepare_input(np.stack([ramp((16, 16))] * 2), "qpi").shape == (2, 16, 16)
    with pytest.raises(DataError, match="stack.tif.*2 planes"):
        prepare_input(ramp((16, 16)), "qpi", name="stack.tif")


# ----------------------------------------------------------------------------- splits, patches, batches


def make_pairs(n, size=32):
    return [ImagePair(f"img{i:02d}", ramp((1, size, size), i), 2 * ramp((1, size, size), i)) for i in range(n)]


def test_validation_split_is_by_image_deterministic_and_order_independent():
    pairs = make_pairs(20)
    train, val = split_by_image(pairs, val_fraction=0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert not {p.name for p in train} & {p.name for p in val}
    assert {p.name for p in train} | {p.name for p in val} == {p.name for p in pairs}
    _, val2 = split_by_image(pairs[::-1], val_fraction=0.2, seed=0)
    assert [p.name for p in val2] == [p.name for p in val]
    _, val3 = split_by_image(pairs, val_fraction=0.2, seed=1)
    assert {p.name for p in val3} != {p.name for p in val}
    with pytest.raises(DataError, match="cannot be split"):
        split_by_image(make_pairs(1), val_fraction=0.1)
    assert split_by_image(make_pairs(1), val_fraction=0.0)[1] == []


def test_patches_and_flips_keep_input_and_target_aligned():
    rng = np.random.default_rng(0)
    pair = ImagePair("p", np.stack([ramp((40, 40)), -ramp((40, 40))]), 3 * ramp((1, 40, 40)) + 1)
    seen = set()
    for _ in range(40):
        inp, tgt = random_patch(pair, 16, rng)
        inp, tgt = random_dihedral(inp, tgt, rng)
        assert inp.shape == (2, 16, 16) and tgt.shape == (1, 16, 16)
        np.testing.assert_allclose(tgt[0], 3 * inp[0] + 1, rtol=1e-5)
        np.testing.assert_allclose(inp[1], -inp[0])
        seen.add((inp[0, 0, 0] < inp[0, 0, 1], inp[0, 0, 0] < inp[0, 1, 0], float(inp[0, 0, 0])))
    assert len(seen) > 8  # different windows and orientations were drawn
    with pytest.raises(DataError, match="smaller than the patch"):
        random_patch(pair, 64, rng)


def test_validation_set_is_fixed_tiles_of_held_out_images():
    pairs = make_pairs(2, size=48)
    x_in, x_target = make_validation_set(pairs, "sr", patch_size=16, input_normalizer=IDENTITY, target_normalizer=IDENTITY)
    assert x_in.shape == (18, 1, 16, 16)  # 3 × 3 tiles per image
    torch.testing.assert_close(x_target, 2 * x_in)
    again_in, _ = make_validation_set(pairs, "sr", patch_size=16, input_normalizer=IDENTITY, target_normalizer=IDENTITY)
    torch.testing.assert_close(again_in, x_in)
    capped, _ = make_validation_set(pairs, "sr", patch_size=16, max_patches=4)
    assert capped.shape[0] == 4


def test_a_pair_given_the_wrong_way_round_is_named_as_swapped():
    sim = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    widefield = sim[::2, ::2].copy()
    with pytest.raises(DataError, match="look swapped: the input is the coarser"):
        pairs_from_arrays([sim], [widefield], "sr")


def test_input_and_target_pixel_sizes_must_agree():
    assert raw_pixel_size(0.1, 0.05, (8, 8), (16, 16), 2) == pytest.approx(0.1)
    assert raw_pixel_size(0.05, None, (16, 16), (16, 16), 2) == pytest.approx(0.1)  # already on the target grid
    assert raw_pixel_size(None, None, (8, 8), (16, 16), 2) is None
    with pytest.raises(DataError, match="0.1 µm pixels but .* 0.1 µm: for this pair the input's should be 0.2"):
        raw_pixel_size(0.1, 0.1, (8, 8), (16, 16), 2)
    with pytest.raises(DataError, match="look swapped"):
        raw_pixel_size(0.05, 0.1, (16, 16), (8, 8), 2)
