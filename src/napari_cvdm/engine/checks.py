"""Checks before any computing: the input against the model, memory, pixel size, and the plane layout.

Each raises :class:`~napari_cvdm.errors.InputError` with one sentence, or returns a warning sentence.
The layout (:func:`check_layout`: shape, dtype, channels) reads no values and is safe on a GUI
thread; the values (:func:`check_values`: NaN, infinity, overflow) are read, plane by plane: an
in-memory image's before computing, a lazy image's (dask, zarr) as the job reads each plane.
"""

from __future__ import annotations

import numpy as np

from ..checkpoint import ModelInfo
from ..data.datasets import PIXEL_SIZE_TOLERANCE
from ..errors import InputError
from .settings import ReconstructionSettings

#: Smallest image side (input pixels) a model is run on.
MIN_INPUT_SIZE = 8


#: Largest |value| of an input image: the variance of float32 samples of larger values overflows.
MAX_INPUT_MAGNITUDE = 1e15


#: Fraction of the machine's memory a reconstruction's outputs may take.
MEMORY_FRACTION = 0.7




def check_call(settings, input_pixel_size_um) -> None:
    """InputError for arguments of :func:`reconstruct` of the wrong kind (before any computing)."""
    if settings is not None and not isinstance(settings, ReconstructionSettings):
        raise InputError(f"settings must be a ReconstructionSettings (got {type(settings).__name__}); "
                         "e.g. ReconstructionSettings(**your_dict).")
    if input_pixel_size_um is None:
        return
    if isinstance(input_pixel_size_um, bool) or not isinstance(input_pixel_size_um, int | float | np.floating) \
            or not np.isfinite(input_pixel_size_um) or input_pixel_size_um <= 0:
        raise InputError(f"input_pixel_size_um must be a positive number of µm (got {input_pixel_size_um!r}).")


def _task_words(info: ModelInfo) -> str:
    return {"sr": "super-resolution", "qpi": "QPI"}.get(info.task, info.task)


def is_lazy(image) -> bool:
    """True for an array-like read plane by plane (dask, zarr): it has a shape and dtype but is no ndarray."""
    return not isinstance(image, np.ndarray) and hasattr(image, "shape") and hasattr(image, "dtype")


def validate_input(info: ModelInfo, image: np.ndarray, axes: str | None = None) -> None:
    """Raise InputError with one clear sentence if ``image`` cannot go through this model.

    Its layout (:func:`check_layout`), then the values of every plane (:func:`check_values`).
    ``axes`` (e.g. ``"CYX"`` from a TIFF) lets a named channel axis be checked against the model.
    A lazy array (dask, zarr) is read plane by plane, never held whole, but it is read: on a GUI
    thread use :func:`check_layout`.
    """
    image = _as_image(image)
    check_layout(info, image, axes)
    check_values(info, image)


def check_layout(info: ModelInfo, image, axes: str | None = None) -> None:
    """InputError unless ``image``'s dtype, dimensions, channels and size fit the model.

    Reads no values: cheap and safe on a GUI thread, for a lazy array (dask, zarr) too.
    """
    image = _as_image(image)
    _check_layout(info, tuple(image.shape), np.dtype(image.dtype), axes)


def check_values(info: ModelInfo, image) -> None:
    """InputError for NaN, infinite or overflowing values in any plane of ``image``, read one plane at a time."""
    image = _as_image(image)
    count = plane_count(info, image)
    for p in range(count):
        check_plane_values(plane_at(info, image, p), p, count)


def check_values_before_computing(info: ModelInfo, image) -> None:
    """:func:`check_values` of an in-memory image (cheap); nothing for a lazy one, whose planes are
    checked one by one as the job reads them (:func:`check_plane_values`), so each is read once."""
    if not is_lazy(image):
        check_values(info, image)


def _as_image(image):
    """``image`` itself when it is an ndarray or a lazy array, else as an ndarray; InputError if it is none."""
    if isinstance(image, np.ndarray) or is_lazy(image):
        return image
    try:
        return np.asarray(image)
    except Exception:  # noqa: BLE001 - anything not array-like
        raise InputError(f"The input is not an image (got {type(image).__name__}).") from None


def _check_layout(info: ModelInfo, shape: tuple, dtype: np.dtype, axes: str | None) -> None:
    """InputError when an array of ``shape`` and ``dtype`` does not fit the model's layout."""
    channels, ndim = int(info.config.y_channels), len(shape)
    if dtype.kind not in "uif":
        raise InputError(f"The input holds {dtype} values; expected a grayscale intensity image.")
    if channels == 1:
        layout = "a 2-D image (H, W) or a stack (…, H, W)"
        if info.task == "sr":
            layout = "a raw widefield image (H, W) or a stack of them (…, H, W)"
        if ndim < 2:
            raise InputError(f"This {_task_words(info)} model needs {layout}; got shape {shape}.")
        if axes and "C" in axes and shape[axes.index("C")] > 1:
            raise InputError(
                f"The image has {shape[axes.index('C')]} channels (axes {axes}), but this "
                f"{_task_words(info)} model takes single-channel images"
                + ("; a defocus stack needs a QPI model." if shape[axes.index("C")] == 2 else ".")
            )
    else:
        what = "a defocus stack [I(−dz), I(+dz)]" if info.task == "qpi" else f"{channels} channels"
        if ndim < 3 or shape[-3] != channels:
            raise InputError(f"This {_task_words(info)} model needs {what} shaped (…, {channels}, H, W); "
                             f"got shape {shape}.")
        if axes and len(axes) == ndim and axes[-3] not in "CZ":
            raise InputError(f"This {_task_words(info)} model needs the channel axis third from last "
                             f"(…, {channels}, H, W); the image's axes are {axes}.")
    if min(shape[-2:]) < MIN_INPUT_SIZE:
        raise InputError(f"The image is too small ({shape[-2]}×{shape[-1]} pixels); "
                         f"at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} is needed.")


def check_plane_values(plane: np.ndarray, p: int = 0, planes: int = 1) -> None:
    """InputError for NaN, infinite or overflowing values in plane ``p`` of ``planes`` (an ndarray);
    the sentence names the plane when there are several."""
    where = f" in plane {p}" if planes > 1 else ""
    if plane.dtype.kind == "f":
        finite = np.isfinite(plane)
        if not finite.all():
            bad = "NaN" if np.isnan(plane).any() else "infinite"
            raise InputError(f"The image contains {bad} values{where} ({int(plane.size - finite.sum())} pixels); "
                             "replace them before reconstructing.")
    largest = float(np.abs(plane).max()) if plane.size else 0.0
    if largest > MAX_INPUT_MAGNITUDE:  # squares of such values overflow float32 in the variance
        raise InputError(f"The image holds values up to {largest:.3g}{where}; intensities beyond "
                         f"{MAX_INPUT_MAGNITUDE:.0e} cannot be reconstructed in float32: rescale it first.")


def available_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(output_values: int) -> None:
    """InputError before any computing when the float32 outputs alone would not fit in memory."""
    needed, available = 4 * int(output_values), available_memory_bytes()
    if available is not None and needed > MEMORY_FRACTION * available:
        raise InputError(f"The result would need {needed / 2**30:.1f} GiB for its output images alone, but this "
                         f"machine has {available / 2**30:.1f} GiB; crop the image, reconstruct fewer planes, "
                         "or do not keep the samples.")


def check_pixel_size(info: ModelInfo, input_pixel_size_um: float | None) -> str | None:
    """A warning sentence if the input's pixel size differs from the model's training data, else None."""
    trained = info.input_pixel_size_um
    if trained is None or input_pixel_size_um is None:
        return None
    if abs(input_pixel_size_um / trained - 1.0) <= PIXEL_SIZE_TOLERANCE:
        return None
    return (f"The input pixel size ({input_pixel_size_um:.4g} µm) differs from the model's training data "
            f"({trained:.4g} µm); structures will not have the sizes the model learned.")


def planes_of(info: ModelInfo, image: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(P, Cy, h, w)`` view of the input and its leading shape."""
    channels = int(info.config.y_channels)
    if channels == 1:
        lead = image.shape[:-2]
        return image.reshape(-1, 1, *image.shape[-2:]), lead
    lead = image.shape[:-3]
    return image.reshape(-1, channels, *image.shape[-2:]), lead


def lead_shape(info: ModelInfo, image) -> tuple[int, ...]:
    """The leading (plane) axes of ``image``'s shape for ``info``'s model."""
    return tuple(image.shape[:-2] if int(info.config.y_channels) == 1 else image.shape[:-3])


def plane_count(info: ModelInfo, image) -> int:
    """How many planes ``image`` holds for ``info``'s model (leading axes flattened)."""
    return int(np.prod(lead_shape(info, image), dtype=np.int64))


def plane_at(info: ModelInfo, image, p: int) -> np.ndarray:
    """Plane ``p`` (C order of the leading axes) as an ndarray ``(Cy, h, w)``; reads only that plane of a lazy array."""
    lead, channels = lead_shape(info, image), int(info.config.y_channels)
    index = tuple(int(i) for i in np.unravel_index(p, lead)) if lead else ()
    if not is_lazy(image):
        return np.asarray(image[index]).reshape(channels, *image.shape[-2:])
    try:
        return np.asarray(image[index]).reshape(channels, *image.shape[-2:])
    except Exception as exc:  # noqa: BLE001 - a damaged store raises anything from zarr, its codecs or dask
        raise InputError(f"plane {p} of the input cannot be read ({type(exc).__name__}); the file is damaged "
                         "or partly written.") from None
