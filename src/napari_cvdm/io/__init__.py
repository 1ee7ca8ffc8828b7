"""Image input/output: TIFF here (read, write, sidecars); OME-Zarr in :mod:`.omezarr`; sinks in :mod:`.sinks`.

TIFF input/output with physical pixel sizes, and JSON sidecars.

Reading returns the array, its axes (when the file names them: ImageJ
hyperstacks and OME-TIFF) and the pixel size in µm from the file's resolution
tags; with ``lazy`` a series stored one plane per page is read a plane at a time
(:class:`TiffPlanes`), so a long series is never held whole. Writing produces
ImageJ-compatible float32 TIFFs whose resolution tags carry the physical pixel
size (Fiji and napari-tifffile read it back). Files are written to a temporary
name and renamed, so an interrupted run never leaves a half-written output under
the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..checkpoint import write_atomically
from ..errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
#: Folder suffixes of Zarr stores.
ZARR_SUFFIXES = (".zarr",)

#: Micrometres per resolution unit (TIFF ResolutionUnit tag: 2 inch, 3 centimetre).
_RESOLUTION_UNIT_UM = {2: 25_400.0, 3: 10_000.0}
#: Micrometres per ImageJ ``unit`` string.
_IMAGEJ_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "m": 1e6,
}
#: Pixel sizes outside this range (µm) are not microscopy: typically a 72/96 dpi default tag.
PLAUSIBLE_PIXEL_UM = (1e-3, 50.0)
#: Axis letters that name a real dimension (ImageJ/OME); others (Q, I, S) mean "unknown".
_NAMED_AXES = set("TZCYX")


@dataclass
class ImageData:
    """An image read from disk.

    ``array``: float32 ``(..., H, W)``; ``axes``: one letter per dimension
    (``T``, ``Z``, ``C``, ``Y``, ``X``) or None when the file does not name them;
    ``pixel_size_um``: the X pixel size in µm or None when the file has none; ``ngff``: an OME-Zarr's
    axes and level-0 scale and translation (None for a TIFF). An OME-Zarr's ``array`` is lazy (dask).
    """

    array: np.ndarray
    axes: str | None
    pixel_size_um: float | None
    path: Path | None = None
    ngff: dict | None = None


def list_images(paths: list[str | os.PathLike], zarr: bool = False) -> list[Path]:
    """TIFF files (with ``zarr`` also OME-Zarr stores, ``*.zarr`` folders) named directly or found
    (sorted, non-recursive) in the given folders."""
    def wanted(path: Path) -> bool:
        return path.suffix.lower() in TIFF_SUFFIXES or (zarr and is_store(path))

    def is_store(path: Path) -> bool:
        return path.suffix.lower() in ZARR_SUFFIXES and path.is_dir()

    found: list[Path] = []
    for item in map(Path, paths):
        if zarr and item.suffix.lower() in ZARR_SUFFIXES:
            if not item.is_dir():
                raise InputError(f"Input not found: {item}")
            found.append(item)
        elif item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if wanted(p)))
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(f"Input not found: {item}")
    if not found:
        kinds = "TIFF files (*.tif, *.tiff)" + (" or OME-Zarr stores (*.zarr)" if zarr else "")
        raise InputError(f"No {kinds} in {', '.join(map(str, paths))}.")
    return found


#: Free space (bytes) below which an output folder counts as full.
MIN_FREE_BYTES = 16 * 2**20


def check_writable_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Raise InputError unless ``folder`` is, or can be created as, a folder this process can write to.

    Checked before any computing: the nearest existing ancestor must be a writable folder
    (probed by creating a temporary file, which also catches read-only file systems and
    root) with at least :data:`MIN_FREE_BYTES` free. ``what`` names the setting in messages.
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is a file, not a folder; choose another location.")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".cvdm-write-test."):
            pass
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot write to {existing} ({exc.strerror}).") from None
    if shutil.disk_usage(existing).free < MIN_FREE_BYTES:
        raise InputError(f"{what} {folder}: the disk holding {existing} is full; free some space.")
    return folder


def read_image(path: str | os.PathLike, lazy: bool = False) -> ImageData:
    """Read the first series of a TIFF file as float32 with its axes and pixel size.

    With ``lazy``, a series stored one 2-D plane per page (ImageJ hyperstacks, OME-TIFF, tifffile's
    own) comes back as :class:`TiffPlanes`, which reads the pages an index asks for; other layouts
    are read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes.upper()
            one_plane_per_page = (len(shape) >= 2 and tuple(series.keyframe.shape) == shape[-2:]
                                  and len(series.pages) == int(np.prod(shape[:-2], dtype=np.int64)))
            if lazy and one_plane_per_page:  # a damaged file shows here, in its first or last page
                array = None
                tif.asarray(key=sorted({0, len(series.pages) - 1}), series=0)
            else:
                array = series.asarray()
            pixel_size = _pixel_size_um(tif)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise InputError(f"Cannot read {path.name} as a TIFF image ({exc}).") from None
    if dtype.kind not in "uif":
        raise InputError(f"{path.name} holds {dtype} data; expected a grayscale intensity image.")
    if axes.endswith("S") and shape[-1] in (3, 4):  # samples per pixel: RGB(A)
        raise InputError(f"{path.name} is an RGB colour image; expected a grayscale intensity image "
                         "(split the channels or convert it to grayscale first).")
    axes = axes if len(axes) == len(shape) and set(axes) <= _NAMED_AXES else None
    array = TiffPlanes(path, shape) if array is None else np.asarray(array, dtype=np.float32)
    return ImageData(array, axes, pixel_size, path)


class TiffPlanes:
    """The first series of a TIFF stored one 2-D plane per page, read as float32 a page at a time.

    ``shape`` ``(..., H, W)``; ``image[i, j, ...]`` (integers over leading axes, then anything)
    reads only the pages of those planes; any other index reads the whole series.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = Path(path), tuple(int(n) for n in shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        lead = self.shape[:-2]
        ints = 0
        while ints < min(len(key), len(lead)) and isinstance(key[ints], (int, np.integer)):
            ints += 1
        if ints == 0:
            return self._read(None)[key]
        index = tuple(int(k) + n if int(k) < 0 else int(k) for k, n in zip(key[:ints], lead))
        if any(not 0 <= i < n for i, n in zip(index, lead)):
            raise IndexError(f"index {key[:ints]} is out of bounds for a series of shape {self.shape}")
        rest = lead[ints:]
        first = int(np.ravel_multi_index(index + (0,) * len(rest), lead))
        count = int(np.prod(rest, dtype=np.int64))
        block = self._read(list(range(first, first + count))).reshape(*rest, *self.shape[-2:])
        return block[key[ints:]] if len(key) > ints else block

    def _read(self, pages: list[int] | None) -> np.ndarray:
        """The given pages of the series (all of them for None), float32, shaped ``(pages, H, W)``."""
        with tifffile.TiffFile(self.path) as tif:
            data = tif.asarray(key=pages, series=0)
        data = np.asarray(data, dtype=np.float32)
        return data.reshape(self.shape) if pages is None else data.reshape(len(pages), *self.shape[-2:])

    def __array__(self, dtype=None, copy=None):
        data = self._read(None)
        return data if dtype is None else data.astype(dtype, copy=False)


def _pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    if tif.is_ome and tif.ome_metadata:
        size = _ome_pixel_size_um(tif.ome_metadata)
        if size is not None:
            return size
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    if numerator <= 0 or denominator <= 0:
        return None
    pixels_per_unit = numerator / denominator
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit in _RESOLUTION_UNIT_UM:
        um_per_unit = _RESOLUTION_UNIT_UM[unit]
    else:  # unit NONE: ImageJ keeps the physical unit in its own metadata
        imagej_unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
        if imagej_unit not in _IMAGEJ_UNIT_UM:
            return None
        um_per_unit = _IMAGEJ_UNIT_UM[imagej_unit]
    size = um_per_unit / pixels_per_unit
    low, high = PLAUSIBLE_PIXEL_UM
    return float(size) if low <= size <= high else None


def _ome_pixel_size_um(xml: str) -> float | None:
    size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if size is None:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    factor = _IMAGEJ_UNIT_UM.get(unit.group(1).lower() if unit else "µm")
    return None if factor is None else float(size.group(1)) * factor


def write_image(path: str | os.PathLike, array: np.ndarray, pixel_size_um: float | None = None,
                axes: str | None = None) -> Path:
    """Write ``array`` ``(..., H, W)`` as an ImageJ float32 TIFF with its physical pixel size.

    ``axes`` names the dimensions in ImageJ order (e.g. ``"ZYX"``, ``"TCYX"``); by
    default the leading dimensions are called Z, then T. The file appears under
    its final name only once complete.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.float32)
    axes = axes or _default_axes(array.ndim)
    if len(axes) != array.ndim:
        raise ValueError(f"axes {axes!r} do not match an array of shape {array.shape}")
    kwargs: dict = {"imagej": True, "metadata": {"axes": axes}}
    if pixel_size_um is not None:
        kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        kwargs["metadata"]["unit"] = "um"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tifffile.imwrite(tmp, array, **kwargs)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes the file private (0600); outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _default_axes(ndim: int) -> str:
    if ndim < 2 or ndim > 5:
        raise ValueError(f"cannot write a {ndim}-D array as an ImageJ TIFF")
    return {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}[ndim]


def write_sidecar(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON (atomically)."""
    path = Path(path)
    write_atomically(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())
    return path


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


from .sinks import TiffSink  # noqa: E402  (uses write_sidecar above)
