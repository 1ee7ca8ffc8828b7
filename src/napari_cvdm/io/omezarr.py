"""OME-Zarr (NGFF 0.4 and 0.5) in and out, through ome-zarr-py.

Reading takes the highest-resolution level as a lazy dask array (read one plane at a time by the
job), its axes and the physical pixel size and offset of its X axis from the metadata. Writing
(:class:`ZarrSink`) makes one store per output, NGFF 0.5: level 0 on the output grid and a pyramid of
2×2 means, each level with its scale and translation (pixel centres; SR's finer grid is offset by
half a fine pixel minus half a camera pixel), so napari-ome-zarr places it over its input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import ZARR_SUFFIXES, ImageData
from .sinks import FileSink, samples_first

#: µm per unit of an NGFF space axis.
UNIT_UM = {"nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
           "angstrom": 1e-4}
#: Smallest side (pixels) of a pyramid level; at most this many levels below the full resolution.
PYRAMID_MIN_SIDE, PYRAMID_LEVELS = 64, 4


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` names a Zarr store (a folder ending in .zarr)."""
    return Path(path).suffix.lower() in ZARR_SUFFIXES


def read_ome_zarr(path: str | Path) -> ImageData:
    """The highest resolution of an OME-Zarr image as a lazy array, with its axes (e.g. ``"TCYX"``),
    X pixel size (µm; None without a unit) and ``ngff`` (the axes and level-0 transformations)."""
    path = Path(path)
    multiscales, array = _open(path)
    axes = multiscales.get("axes") or []
    names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes]
    if len(names) != array.ndim or not set(names) <= set("tczyx") or names[-2:] != ["y", "x"]:
        raise InputError(f"{path.name}: its axes {names or '(none)'} cannot be read as T, C, Z, Y, X "
                         f"for an array of shape {tuple(array.shape)}.")
    scale, translation = _transformations(multiscales["datasets"][0], array.ndim)
    unit = axes[-1].get("unit") if isinstance(axes[-1], dict) else None
    pixel = None if unit not in UNIT_UM else float(scale[-1]) * UNIT_UM[unit]
    ngff = {"axes": [a if isinstance(a, dict) else {"name": a} for a in axes], "scale": scale,
            "translation": translation, "unit_um": UNIT_UM.get(unit)}
    return ImageData(array, "".join(names).upper(), pixel, path, ngff)


def _open(path: Path):
    """The multiscales metadata and level-0 dask array of the store at ``path`` (InputError if unreadable)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    if not path.is_dir():
        raise InputError(f"OME-Zarr store not found: {path}")
    try:
        location = parse_url(path, mode="r")
        node = next((n for n in Reader(location)() if any(isinstance(s, Multiscales) for s in n.specs)), None) \
            if location is not None else None
        if node is None:
            raise InputError(f"{path.name} is not an OME-Zarr image (no multiscales metadata).")
        multiscales = node.zarr.root_attrs["multiscales"][0]
        _check_complete(path, multiscales["datasets"][0]["path"])
        return multiscales, node.data[0]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged store raises anything from zarr, json or dask
        raise InputError(f"Cannot read {path.name} as OME-Zarr ({type(exc).__name__}: {exc}).") from None


def _check_complete(path: Path, level: str) -> None:
    """InputError when chunks of the full-resolution array are missing (a store still or partly written)."""
    import zarr

    array = zarr.open_array(path / level, mode="r")
    if array.nchunks_initialized < array.nchunks:
        raise InputError(f"{path.name} is partly written: {array.nchunks - array.nchunks_initialized} of "
                         f"{array.nchunks} chunks of its full resolution are missing.")


def _transformations(dataset: dict, ndim: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for item in dataset.get("coordinateTransformations", []):
        if item.get("type") == "scale" and "scale" in item:
            scale = [float(v) for v in item["scale"]]
        elif item.get("type") == "translation" and "translation" in item:
            translation = [float(v) for v in item["translation"]]
    return scale, translation


def check_readable(image: ImageData) -> None:
    """InputError when a chunk of the first or last plane (all its channels) is damaged: those two are read.
    A damaged chunk elsewhere is found when the job reads its plane."""
    array, lead = image.array, image.axes[:-2]
    planes = [n for n, axis in zip(array.shape[:-2], lead) if axis != "C"]
    try:
        for index in {0, int(np.prod(planes)) - 1}:
            position = iter(np.unravel_index(index, planes))
            np.asarray(array[tuple(slice(None) if axis == "C" else int(next(position)) for axis in lead)])
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{Path(image.path).name} is damaged or partly written ({type(exc).__name__}: "
                         f"{exc}).") from None


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of level 0 and of each 2×2-mean level below it while the smaller side stays ≥ 64 px."""
    shapes = [(height, width)]
    while len(shapes) <= PYRAMID_LEVELS and min(shapes[-1]) // 2 >= PYRAMID_MIN_SIDE:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def downsample(plane: np.ndarray) -> np.ndarray:
    """The 2×2 means of a 2-D plane (an odd last row or column dropped), float32."""
    h, w = plane.shape[0] // 2 * 2, plane.shape[1] // 2 * 2
    blocks = plane[:h, :w].reshape(h // 2, 2, w // 2, 2).astype(np.float64)
    return blocks.mean(axis=(1, 3)).astype(np.float32)


class ZarrSink(FileSink):
    """Writes a prediction's outputs as one OME-Zarr store each (``paths[name]``, ``<stem>_<name>.ome.zarr``)
    and its record as the JSON ``sidecar``; every plane goes to each pyramid level as it comes.

    ``lead_axes``: the NGFF axes (dicts) of the outputs' leading axes, with their ``lead_scale`` and
    ``lead_translation``; ``origin_um``: the input's level-0 (y, x) translation (µm); ``input_pixel_um``:
    its pixel size, from which SR's finer grid is placed.
    """

    def __init__(self, paths: dict[str, Path], sidecar: Path, lead_axes: list[dict], lead_scale: list[float],
                 lead_translation: list[float], origin_um: tuple[float, float] = (0.0, 0.0),
                 input_pixel_um: float | None = None, progress=None, in_place: bool = False):
        super().__init__(paths, sidecar, progress, in_place)
        self.lead_axes, self.lead_scale, self.lead_translation = lead_axes, lead_scale, lead_translation
        self.origin_um, self.input_pixel_um = origin_um, input_pixel_um
        self._levels: dict[str, list] = {}

    def _store_shape_axes(self, name: str, plan) -> tuple[tuple[int, ...], list[dict], int]:
        """The store's array shape, NGFF axes and where a samples axis N sits (−1: none)."""
        axes = [dict(a) for a in self.lead_axes]
        shape, n_at = tuple(plan.shape), -1
        if len(shape) - plan.n_lead - (name == "samples") == 3:
            axes.append({"name": "c", "type": "channel"})
        if name == "samples":
            if any(a.get("type") in ("channel", None) or a["name"] == "c" for a in axes):
                raise InputError("Samples of this image cannot be written as OME-Zarr (it has a channel axis); "
                                 "use --format tiff.")
            n_at = 1 if axes and axes[0]["name"] == "t" else 0
            axes.insert(n_at, {"name": "sample", "type": "custom"})
            moved = samples_first(shape, plan.n_lead)
            shape = (*moved[1:n_at + 1], moved[0], *moved[n_at + 1:])
        axes += [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space",
                                                                          "unit": "micrometer"}]
        return shape, axes, n_at

    def _datasets(self, plan, axes: list[dict], levels: int) -> list[dict]:
        """Each level's path, scale and translation (pixel centres; a 2×2-mean level's centre sits
        half a level-0 pixel further than its first source pixel's)."""
        pixel = plan.pixel_size_um if plan.pixel_size_um is not None else 1.0
        camera = self.input_pixel_um if self.input_pixel_um is not None else pixel
        given = {a["name"]: (scale, shift) for a, scale, shift in
                 zip(self.lead_axes, self.lead_scale, self.lead_translation)}
        lead = [given.get(a["name"], (1.0, 0.0)) for a in axes[:-2]]
        datasets = []
        for k in range(levels):
            size = pixel * 2**k
            offset = [o + (pixel - camera) / 2 + (2**k - 1) * pixel / 2 for o in self.origin_um]
            datasets.append({"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": [*(s for s, _ in lead), size, size]},
                {"type": "translation", "translation": [*(t for _, t in lead), *offset]}]})
        return datasets

    def _create(self, name: str, plan, path: Path) -> None:
        import zarr
        from ome_zarr.writer import write_multiscales_metadata

        shape, axes, _ = self._store_shape_axes(name, plan)
        group = zarr.open_group(path, mode="w", zarr_format=3)
        levels = pyramid_shapes(*shape[-2:])
        for k, (h, w) in enumerate(levels):
            group.create_array(str(k), shape=(*shape[:-2], h, w), dtype="float32", fill_value=np.nan,
                               chunks=(*[1] * (len(shape) - 2), min(h, 1024), min(w, 1024)),
                               dimension_names=[a["name"] for a in axes])
        write_multiscales_metadata(group, self._datasets(plan, axes, len(levels)), axes=axes, name=name)

    def _attach(self, name: str, plan, path: Path) -> None:
        import zarr

        shape = self._store_shape_axes(name, plan)[0]
        try:
            group = zarr.open_group(path, mode="r+")
            arrays = [group[str(k)] for k in range(len(pyramid_shapes(*shape[-2:])))]
        except Exception as exc:  # noqa: BLE001 - a damaged store raises anything from zarr or json
            raise InputError(f"--resume: cannot reopen {path.name} ({exc}); use --overwrite to start again.") from None
        if tuple(arrays[0].shape) != shape:
            raise InputError(f"--resume: {path.name} is not the stopped run's output; use --overwrite to start again.")
        self._levels[name] = arrays

    def put(self, name: str, plane: int, planes: int, data: np.ndarray) -> None:
        if name not in self._levels:
            return
        plan = self.layout[name]
        where = [int(i) for i in np.unravel_index(plane, plan.shape[:-2])]
        _, _, n_at = self._store_shape_axes(name, plan)
        if n_at >= 0:  # N from after the leading axes to its place in the store
            n = where.pop(plan.n_lead)
            where.insert(n_at, n)
        level = np.asarray(data, np.float32)
        for k, array in enumerate(self._levels[name]):
            if k:
                level = downsample(level)
            array[tuple(where)] = level
