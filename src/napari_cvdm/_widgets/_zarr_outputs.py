"""Every plane of a large layer (multiscale or dask) into OME-Zarr stores, shown as lazy layers that fill in.

The job writes each finished plane into one store per output in a folder the user chose
(``<layer>_<output>.ome.zarr``, written in place: no rename, so the layers read them while they grow).
When the stores exist the widget adds one multiscale layer per output on their pyramids; after each
plane it refreshes them. A cancelled run keeps the planes already finished in the stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.omezarr import ZarrSink
from ._layers import (
    CALIBRATED_STD_SUFFIX, CONSISTENCY_SUFFIX, ERROR_SUFFIX, GAMMA_SUFFIX, MEAN_SUFFIX, SAMPLES_SUFFIX,
    VARIANCE_SUFFIX,
)

#: The layer suffix of each output name.
SUFFIXES = {"mean": MEAN_SUFFIX, "variance": VARIANCE_SUFFIX, "std_calibrated": CALIBRATED_STD_SUFFIX,
            "error95": ERROR_SUFFIX, "gamma": GAMMA_SUFFIX, "consistency": CONSISTENCY_SUFFIX,
            "samples": SAMPLES_SUFFIX}
COLORMAPS = {"mean": "gray", "gamma": "viridis", "samples": "gray"}


def is_lazy_layer_data(data) -> bool:
    """Whether an input array is not in memory (dask, zarr): it is then never read whole."""
    return not isinstance(data, np.ndarray)


def planned_stores(folder: str | Path, layer_name: str, names: list[str]) -> dict[str, Path]:
    """Each output's store (and the sidecar) in ``folder``; InputError when one exists already."""
    if not str(folder).strip():
        raise InputError("Every plane of a multiscale or dask layer is written as OME-Zarr: choose an output folder "
                         "first (Output folder).")
    stem = re.sub(r"[^\w.-]+", "_", layer_name).strip("_") or "image"
    folder = Path(folder).expanduser()
    paths = {name: folder / f"{stem}_{name}.ome.zarr" for name in names}
    existing = [p for p in paths.values() if p.exists()]
    if existing:
        raise InputError(f"{existing[0]} already exists; choose another output folder or remove it.")
    return {**paths, "sidecar": folder / f"{stem}_cvdm.json"}


@dataclass(frozen=True)
class StoreReport:
    """From the worker: ``kind`` "stores" (``value``: the store paths by output) or "plane" (``value``: its index)."""

    kind: str
    value: object


class LiveZarrSink(ZarrSink):
    """A ZarrSink written in place that reports :class:`StoreReport` s: once its stores exist, and after each
    finished plane (``report`` is the widget worker's)."""

    def __init__(self, paths: dict[str, Path], report, lead_ndim: int, pixel_size_um: float | None,
                 origin_um: tuple[float, float]):
        names = {0: [], 1: ["z"], 2: ["t", "z"]}.get(lead_ndim)
        if names is None:
            raise InputError(f"A layer with {lead_ndim} leading axes cannot be written as OME-Zarr here; "
                             "reconstruct the current plane, or use cvdm predict.")
        axes = [{"name": n, "type": {"t": "time", "z": "space"}[n]} for n in names]
        super().__init__({n: p for n, p in paths.items() if n != "sidecar"}, paths["sidecar"], axes,
                         [1.0] * lead_ndim, [0.0] * lead_ndim, origin_um, pixel_size_um, in_place=True)
        self.report = report

    def open(self, layout: dict) -> dict[int, dict]:
        done = super().open(layout)
        self.report(StoreReport("stores", dict(self.paths)))
        return done

    def plane_done(self, plane: int, record: dict) -> None:
        super().plane_done(plane, record)
        self.report(StoreReport("plane", plane))


def add_store_layers(viewer, display, paths: dict[str, Path]) -> list:
    """One lazy multiscale layer per output store (named like the in-memory outputs) on the output grid of
    ``display`` (napari derives the coarser levels' scale from their shapes); returns the layers."""
    import dask.array as da
    import zarr

    layers = []
    for name, path in paths.items():
        group = zarr.open_group(path, mode="r")
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        levels = [da.from_zarr(group[d["path"]]) for d in datasets]
        on_input = name == "consistency" and display.metadata.get("model_task") == "sr"  # SR's: camera grid
        scale, translate = display.input_geometry if on_input else (display.scale, display.translate)
        layer = viewer.add_image(levels, multiscale=True, name=display.name(SUFFIXES[name]),
                                 colormap=COLORMAPS.get(name, "magma"), scale=scale, translate=translate,
                                 visible=name == "mean", metadata={"cvdm": {**display.metadata, "store": str(path)}})
        layers.append(layer)
    return layers
