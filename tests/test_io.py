"""TIFF input/output: physical pixel sizes, axes, atomic writes, sidecars."""

import json

import numpy as np
import pytest
import tifffile

from napari_cvdm.errors import InputError
from napari_cvdm.io import TiffPlanes, list_images, read_image, write_image, write_sidecar


def test_write_then_read_keeps_data_axes_and_pixel_size(tmp_path):
    data = np.random.default_rng(0).random((3, 2, 20, 24)).astype(np.float32)
    path = write_image(tmp_path / "stack.tif", data, pixel_size_um=0.0313, axes="TCYX")
    image = read_image(path)
    assert np.array_equal(image.array, data) and image.array.dtype == np.float32
    assert image.axes == "TCYX"
    assert image.pixel_size_um == pytest.approx(0.0313, rel=1e-6)
    with tifffile.TiffFile(path) as tif:  # what Fiji reads
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"


@pytest.mark.parametrize("write", [
    lambda path, a: tifffile.imwrite(path, a, imagej=True, metadata={"axes": "TCYX"}),
    lambda path, a: tifffile.imwrite(path, a, ome=True, metadata={"axes": "TCYX"}),
    lambda path, a: tifffile.imwrite(path, a, compression="zlib"),
    lambda path, a: tifffile.imwrite(path, (a * 1000).astype(np.uint16), imagej=True, metadata={"axes": "TCYX"}),
], ids=["imagej", "ome", "zlib", "uint16"])
def test_a_lazy_read_gives_the_values_of_a_whole_read(tmp_path, write):
    write(tmp_path / "s.tif", np.random.default_rng(1).random((5, 2, 12, 16)).astype(np.float32))
    whole, lazy = read_image(tmp_path / "s.tif").array, read_image(tmp_path / "s.tif", lazy=True).array
    assert isinstance(lazy, TiffPlanes) and lazy.shape == whole.shape and lazy.dtype == np.float32
    for key in [3, (2, 1), (-1, 0, slice(2, 9)), (slice(None), 1), (4, slice(None), 3)]:
        assert np.array_equal(lazy[key], whole[key]), key
    assert np.array_equal(np.asarray(lazy), whole)
    with pytest.raises(IndexError):
        lazy[5, 0]


def test_a_lazy_read_reads_only_the_pages_of_the_planes_asked_for(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((6, 2, 8, 8), np.float32), imagej=True, metadata={"axes": "TCYX"})
    lazy = read_image(tmp_path / "s.tif", lazy=True).array
    asked = []
    read = TiffPlanes._read
    monkeypatch.setattr(TiffPlanes, "_read", lambda self, pages: asked.append(pages) or read(self, pages))
    assert lazy[4].shape == (2, 8, 8) and lazy[1, 1].shape == (8, 8)
    assert asked == [[8, 9], [3]]


def test_a_tiff_whose_pages_are_not_planes_is_read_whole(tmp_path):
    data = np.random.default_rng(2).random((2, 8, 8)).astype(np.float32)  # one page, two samples per pixel
    tifffile.imwrite(tmp_path / "planar.tif", data, photometric="minisblack", planarconfig="separate")
    image = read_image(tmp_path / "planar.tif", lazy=True)
    assert isinstance(image.array, np.ndarray) and np.array_equal(image.array, data)


def test_default_axes_name_leading_dimensions_z_then_t(tmp_path):
    read = read_image(write_image(tmp_path / "z.tif", np.zeros((4, 8, 8)), pixel_size_um=None))
    assert read.axes == "ZYX" and read.pixel_size_um is None
    assert read_image(write_image(tmp_path / "tz.tif", np.zeros((2, 3, 8, 8)))).axes == "TZYX"


@pytest.mark.parametrize("resolution,unit,metadata,expected", [
    ((1e4 / 0.2, 1e4 / 0.2), "CENTIMETER", None, 0.2),       # 0.2 µm pixels given per centimetre
    ((25_400 / 0.5, 25_400 / 0.5), "INCH", None, 0.5),
    ((1 / 65.0, 1 / 65.0), "NONE", {"unit": "nm"}, 0.065),   # ImageJ: 65 nm pixels
    ((72.0, 72.0), "INCH", None, None),                      # a 72 dpi default is not a pixel size
    ((1.0, 1.0), "NONE", None, None),                        # no unit: unknown
])
def test_pixel_size_from_resolution_tags(tmp_path, resolution, unit, metadata, expected):
    path = tmp_path / "image.tif"
    kwargs = {"imagej": True, "metadata": metadata} if metadata else {}
    tifffile.imwrite(path, np.zeros((8, 8), np.float32), resolution=resolution, resolutionunit=unit, **kwargs)
    size = read_image(path).pixel_size_um
    assert size == (pytest.approx(expected) if expected is not None else None)


def test_ome_tiff_physical_size(tmp_path):
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), ome=True,
                     metadata={"PhysicalSizeX": 108.0, "PhysicalSizeXUnit": "nm", "axes": "YX"})
    image = read_image(path)
    assert image.pixel_size_um == pytest.approx(0.108) and image.array.dtype == np.float32


def test_an_interrupted_write_leaves_neither_a_partial_file_nor_a_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    write_image(target, np.ones((8, 8)))

    def broken(path, data, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\x00 partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        write_image(target, np.zeros((8, 8)))
    assert np.array_equal(read_image(target).array, np.ones((8, 8)))  # the old complete file
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_list_images_expands_folders_and_refuses_missing_paths(tmp_path):
    for name in ("b.tif", "a.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path])] == ["a.tiff", "b.tif"]
    with pytest.raises(InputError, match="not found"):
        list_images([tmp_path / "missing.tif"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="No TIFF"):
        list_images([empty])


def test_unreadable_and_wrong_kind_files_raise_one_line(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(InputError) as error:
        read_image(bad)
    assert "bad.tif" in str(error.value) and "\n" not in str(error.value)
    rgb = tmp_path / "complex.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8), np.complex64))
    with pytest.raises(InputError, match="complex"):
        read_image(rgb)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nothing.tif")


def test_sidecar_is_json(tmp_path):
    path = write_sidecar(tmp_path / "s.json", {"path": tmp_path, "value": np.float32(1.5), "list": [1, 2]})
    assert json.loads(path.read_text()) == {"path": str(tmp_path), "value": 1.5, "list": [1, 2]}
