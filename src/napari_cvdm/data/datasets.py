"""Paired training data: TIFF folders, in-memory arrays, patches, splits and batches.

Conventions (all arrays float32 numpy until the validation set makes torch tensors):

- A pair is an :class:`ImagePair`: ``input`` ``(C_in, H, W)`` and ``target``
  ``(C_out, H, W)`` on the same (target) grid.
- ``"sr"``: input = widefield upsampled ×2 to the target grid (C_in = 1; a raw
  widefield at half the target size is upsampled with
  :func:`~napari_cvdm.physics.optics.upsample` on loading), target = SIM-like image.
- ``"qpi"``: input = ``[I(−dz), I(+dz)]`` (C_in = 2), target = phase in radians (C_out = 1).

Typical training set-up::

    pairs = load_pair_folders("inputs/", "targets/", "sr")      # or pairs_from_arrays / SimulatedPairs
    train_pairs, val_pairs = split_by_image(pairs, val_fraction=0.1, seed=0)
    val_in, val_target = make_validation_set(val_pairs, "sr", patch_size=64)

:mod:`napari_cvdm.data.training` does this for a training run and draws its patches
(:func:`random_patch`, :func:`random_dihedral`).

Every problem with user data raises :class:`DataError` naming the file (or array).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..physics.optics import upsample
from .normalize import Normalizer

__all__ = [
    "TASKS",
    "DataError",
    "ImagePair",
    "TaskSpec",
    "check_image",
    "get_task",
    "load_pair_folders",
    "make_pair",
    "make_validation_set",
    "normalize_pair",
    "pairs_from_arrays",
    "prepare_input",
    "random_dihedral",
    "random_patch",
    "check_not_swapped",
    "raw_pixel_size",
    "read_planes",
    "split_by_image",
    "split_by_region",
    "RegionSplit",
]

TIFF_SUFFIXES = (".tif", ".tiff")

#: Relative mismatch of input and training pixel size above which a warning is given.
PIXEL_SIZE_TOLERANCE = 0.1


class DataError(InputError):
    """Unusable training or input data; the message names the file or array and says what is wrong.

    A ``ValueError`` (through :class:`~napari_cvdm.errors.InputError`).
    """


@dataclass(frozen=True)
class TaskSpec:
    """What a task's pairs look like and how they are normalised.

    ``input_upsample``: a raw input whose size is the target's divided by this factor is
    upsampled to the target grid (SR: 2; QPI: 1, same grid).
    """

    name: str
    input_channels: int
    target_channels: int
    input_upsample: int
    input_normalizer: Normalizer
    target_normalizer: Normalizer
    input_description: str
    target_description: str


TASKS: dict[str, TaskSpec] = {
    "sr": TaskSpec(
        name="sr",
        input_channels=1,
        target_channels=1,
        input_upsample=2,
        input_normalizer=Normalizer.per_image_percentile(0.1, 99.9),
        target_normalizer=Normalizer.per_image_percentile(0.1, 99.9),
        input_description="widefield image (raw camera grid, or already upsampled ×2)",
        target_description="SIM-like image on the 2× finer grid",
    ),
    "qpi": TaskSpec(
        name="qpi",
        input_channels=2,
        target_channels=1,
        input_upsample=1,
        input_normalizer=Normalizer.per_image_mean(),
        # The paper's target φ/3.5·2 − 1.
        target_normalizer=Normalizer.fixed(0.0, 3.5),
        input_description="defocus stack [I(-dz), I(+dz)]",
        target_description="phase in radians",
    ),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` for ``"sr"`` or ``"qpi"`` (a spec is returned unchanged)."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[str(task).lower()]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}") from None


@dataclass
class ImagePair:
    """One training image: ``input`` ``(C_in, H, W)`` and ``target`` ``(C_out, H, W)``, float32, same grid."""

    name: str
    input: np.ndarray
    target: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the target grid."""
        return tuple(self.target.shape[-2:])


# ----------------------------------------------------------------------------- validation


def check_image(array: np.ndarray, name: str) -> None:
    """Raise :class:`DataError` naming ``name`` if ``array`` is empty, non-finite or constant."""
    if array.size == 0 or min(array.shape[-2:], default=0) == 0:
        raise DataError(f"{name}: the image is empty (shape {array.shape})")
    finite = np.isfinite(array)
    if not finite.all():
        bad = "NaN" if np.isnan(array).any() else "Inf"
        raise DataError(f"{name}: the image contains {bad} values ({int((~finite).sum())} pixels)")
    planes = array.reshape(-1, *array.shape[-2:])
    flat = [i for i, plane in enumerate(planes) if plane.max() == plane.min()]
    if flat:
        where = "the image" if len(planes) == 1 else f"plane {flat[0]}"
        raise DataError(f"{name}: {where} is constant ({float(planes[flat[0]].flat[0])}); nothing to learn from")


def _as_planes(array: np.ndarray, channels: int, name: str, role: str) -> np.ndarray:
    """Reshape an image or stack to ``(P, channels, H, W)``: P independent samples of ``channels`` planes."""
    array = np.asarray(array)
    if array.ndim == 2:
        if channels != 1:
            raise DataError(f"{name}: the {role} needs {channels} planes per image, got a single 2-D image {array.shape}")
        array = array[None, None]
    elif array.ndim == 3:
        if array.shape[-1] in (3, 4) and array.shape[0] > 4:
            raise DataError(f"{name}: looks like an RGB(A) image {array.shape}; convert it to grayscale")
        if channels == 1:
            array = array[:, None]
        elif array.shape[0] == channels:
            array = array[None]
        else:
            raise DataError(
                f"{name}: the {role} needs {channels} planes per image, got a stack of {array.shape[0]} {array.shape}"
            )
    elif array.ndim == 4:
        if array.shape[1] != channels:
            raise DataError(f"{name}: the {role} needs {channels} channels (axis 1), got {array.shape}")
    else:
        raise DataError(f"{name}: cannot read a {array.ndim}-D {role} {array.shape}; expected 2-D images or stacks")
    return array


def prepare_input(image: np.ndarray, task: str | TaskSpec, name: str = "input", upsampled: bool = False) -> np.ndarray:
    """A user's raw input image as the model's input ``(C_in, H, W)`` float32 on the target grid.

    SR: a 2-D widefield image ``(h, w)`` is upsampled ×2 unless ``upsampled`` (already on
    the target grid). QPI: a ``(2, H, W)`` stack ``[I(−dz), I(+dz)]``. Raises
    :class:`DataError` naming ``name`` for a wrong channel count, NaN/Inf or a constant image.
    """
    spec = get_task(task)
    planes = _as_planes(image, spec.input_channels, name, "input")
    if planes.shape[0] != 1:
        raise DataError(f"{name}: expected one {spec.input_description}, got a stack of {planes.shape[0]} images")
    array = planes[0].astype(np.float32)
    check_image(array, name)
    if spec.input_upsample > 1 and not upsampled:
        array = upsample(array, spec.input_upsample)
    return array


def make_pair(
    input_image: np.ndarray,
    target_image: np.ndarray,
    task: str | TaskSpec,
    name: str,
    input_name: str | None = None,
    target_name: str | None = None,
) -> ImagePair:
    """Check one input/target and bring the input to the target grid.

    ``input_image``: ``(H, W)``/``(C_in, H, W)``, or for SR a raw widefield at
    ``(H/2, W/2)``; ``target_image``: ``(H, W)``/``(C_out, H, W)``.
    """
    spec = get_task(task)
    input_name = input_name or f"{name} (input)"
    target_name = target_name or f"{name} (target)"
    inp = _as_planes(input_image, spec.input_channels, input_name, "input")
    tgt = _as_planes(target_image, spec.target_channels, target_name, "target")
    if inp.shape[0] != 1 or tgt.shape[0] != 1:
        raise DataError(f"{name}: expected single images, got stacks; use load_pair_folders for stacks")
    return _checked_pair(inp[0], tgt[0], spec, name, input_name, target_name)


def _checked_pair(inp, tgt, spec: TaskSpec, name, input_name, target_name) -> ImagePair:
    inp = inp.astype(np.float32)
    tgt = tgt.astype(np.float32)
    check_image(inp, input_name)
    check_image(tgt, target_name)
    target_hw, input_hw = tgt.shape[-2:], inp.shape[-2:]
    factor = spec.input_upsample
    if input_hw != target_hw:
        if factor > 1 and tuple(n * factor for n in input_hw) == tuple(target_hw):
            inp = upsample(inp, factor)
        else:
            check_not_swapped(input_hw, target_hw, factor, input_name, target_name)
            expected = f"{tuple(target_hw)}" + (f" or {tuple(n // factor for n in target_hw)}" if factor > 1 else "")
            raise DataError(
                f"{input_name}: shape {tuple(input_hw)} does not match its target {target_name} "
                f"{tuple(target_hw)}; expected {expected}"
            )
    return ImagePair(name, inp, tgt)


def check_not_swapped(input_hw, target_hw, factor: int, input_name: str = "input",
                      target_name: str = "target") -> None:
    """Raise :class:`DataError` when the input ``(h, w)`` is ``factor`` times the target's: the finer
    image was given as the input (an SR pair the wrong way round)."""
    if factor > 1 and tuple(n * factor for n in target_hw) == tuple(input_hw):
        raise DataError(f"{input_name}: shape {tuple(input_hw)} is {factor}× its target {target_name} "
                        f"{tuple(target_hw)}; input and target look swapped: the input is the coarser "
                        "(widefield) image, the target the finer one")


def raw_pixel_size(input_um: float | None, target_um: float | None, input_hw, target_hw, factor: int,
                   input_name: str = "input", target_name: str = "target") -> float | None:
    """The raw input's pixel size (µm) from an input's and a target's pixel sizes (either may be None)
    and their shapes ``(h, w)``.

    An input already on the target grid has pixels ``factor`` times smaller than the camera's.
    Raises :class:`DataError` for a swapped pair (:func:`check_not_swapped`), and when both sizes
    are known and disagree by more than :data:`PIXEL_SIZE_TOLERANCE`.
    """
    check_not_swapped(input_hw, target_hw, factor, input_name, target_name)
    input_on_target_grid = tuple(input_hw) == tuple(target_hw)
    from_input = None if input_um is None else input_um * (factor if input_on_target_grid else 1)
    from_target = None if target_um is None else target_um * factor
    if from_input is not None and from_target is not None \
            and abs(from_input / from_target - 1.0) > PIXEL_SIZE_TOLERANCE:
        raise DataError(
            f"{input_name} has {input_um:.4g} µm pixels but {target_name} {target_um:.4g} µm: for this pair the "
            f"input's should be {from_target / (factor if input_on_target_grid else 1):.4g} µm "
            f"(target × {factor}{' on the raw grid' if not input_on_target_grid else ''}); check both calibrations")
    return from_input if from_input is not None else from_target


# ----------------------------------------------------------------------------- sources


def read_planes(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF as float32 with singleton axes dropped: ``(H, W)``, ``(P, H, W)`` or ``(P, C, H, W)``."""
    import tifffile

    path = Path(path)
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for broken files
        raise DataError(f"{path}: cannot read this TIFF ({exc})") from exc
    array = np.asarray(array)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array.astype(np.float32, copy=False)


def _tiffs_by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: the {role} folder does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"{path}: two {role} files are named {path.stem!r} ({found[path.stem].name})")
        found[path.stem] = path
    if not found:
        raise DataError(f"{folder}: no .tif/.tiff files in the {role} folder")
    return found


def load_pair_folders(input_dir: str | os.PathLike, target_dir: str | os.PathLike, task: str | TaskSpec) -> list[ImagePair]:
    """Pairs from two folders of TIFFs matched by file name (extension ``.tif``/``.tiff`` may differ).

    Each file is a 2-D image or a stack read plane by plane: ``P`` planes (SR), or for
    QPI an input ``(2, H, W)`` / ``(P, 2, H, W)`` with a target ``(H, W)`` / ``(P, H, W)``,
    give ``P`` pairs named ``stem`` or ``stem[k]``. SR inputs may be raw widefield images
    at half the target size. Raises :class:`DataError` naming the file for a missing
    partner, mismatched shapes or plane counts, a wrong channel count, NaN/Inf, an empty
    or constant image. Sorted by name.
    """
    spec = get_task(task)
    inputs = _tiffs_by_stem(Path(input_dir), "input")
    targets = _tiffs_by_stem(Path(target_dir), "target")
    for stem, path in inputs.items():
        if stem not in targets:
            raise DataError(f"{path}: no target named {stem}.tif in {target_dir}")
    for stem, path in targets.items():
        if stem not in inputs:
            raise DataError(f"{path}: no input named {stem}.tif in {input_dir}")
    pairs = []
    for stem in sorted(inputs):
        input_path, target_path = inputs[stem], targets[stem]
        inp = _as_planes(read_planes(input_path), spec.input_channels, str(input_path), "input")
        tgt = _as_planes(read_planes(target_path), spec.target_channels, str(target_path), "target")
        if inp.shape[0] != tgt.shape[0]:
            raise DataError(
                f"{input_path}: has {inp.shape[0]} image(s) but its target {target_path} has {tgt.shape[0]}"
            )
        for k in range(inp.shape[0]):
            suffix = f"[{k}]" if inp.shape[0] > 1 else ""
            pairs.append(
                _checked_pair(inp[k], tgt[k], spec, stem + suffix, f"{input_path}{suffix}", f"{target_path}{suffix}")
            )
    return pairs


def pairs_from_arrays(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    task: str | TaskSpec,
    names: Sequence[str] | None = None,
) -> list[ImagePair]:
    """Pairs from in-memory images (e.g. napari layers): ``inputs[i]`` with ``targets[i]``.

    Shapes as in :func:`make_pair`; ``names`` (e.g. layer names) appear in error messages.
    """
    if len(inputs) != len(targets):
        raise DataError(f"{len(inputs)} input images but {len(targets)} targets; they are paired by position")
    if not len(inputs):
        raise DataError("no images given")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"{len(names)} names for {len(inputs)} images")
    return [make_pair(inp, tgt, task, name, f"{name} (input)", f"{name} (target)") for inp, tgt, name in zip(inputs, targets, names)]


def split_by_image(
    pairs: Sequence[ImagePair], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[ImagePair], list[ImagePair]]:
    """Hold out whole images (never patches of a training image) for validation.

    ``round(val_fraction·N)`` images, at least one when ``val_fraction > 0``, chosen by a
    seeded shuffle of the names (independent of input order). Raises :class:`DataError` if
    that would leave no training image.
    """
    pairs = sorted(pairs, key=lambda p: p.name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(pairs)))
    if n_val >= len(pairs):
        raise DataError(
            f"{len(pairs)} image(s) cannot be split by image into training and validation; "
            "add images or set the validation fraction to 0"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    held_out = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(pairs) if i not in held_out]
    val = [p for i, p in enumerate(pairs) if i in held_out]
    return train, val


@dataclass(frozen=True)
class RegionSplit:
    """Where a validation band was held out of one image (pixels of the target grid).

    ``axis``: 0 = a band of rows at the bottom, 1 = a band of columns at the right;
    ``train_stop``: the training part is ``[0, train_stop)`` along ``axis``; ``band_start``:
    the band is ``[band_start, extent)``; between them lie ``gap`` unused pixels.
    """

    name: str
    axis: int
    train_stop: int
    band_start: int
    extent: int

    @property
    def gap(self) -> int:
        return self.band_start - self.train_stop

    @property
    def band(self) -> int:
        return self.extent - self.band_start

    def words(self) -> str:
        side = "rows" if self.axis == 0 else "columns"
        return f"{side} {self.band_start}–{self.extent - 1} of {self.name} (training {side} 0–{self.train_stop - 1})"


def split_by_region(pairs: Sequence[ImagePair], val_fraction: float, patch_size: int,
                    gap: int) -> tuple[list[ImagePair], list[ImagePair], list[RegionSplit]]:
    """Hold out a band of every image for validation, ``gap`` pixels away from its training part.

    The band runs along the image's longer side (the bottom rows of a tall or square image, else
    the right columns) and is ``max(patch_size, ceil(val_fraction · extent))`` pixels wide; the
    training part keeps the rest minus the gap. Raises :class:`DataError` naming an image too small
    for a patch, the gap and the band.
    """
    train, val, regions = [], [], []
    for pair in pairs:
        height, width = pair.shape
        axis = 0 if height >= width else 1
        extent = (height, width)[axis]
        band = max(patch_size, int(np.ceil(val_fraction * extent)))
        train_stop = extent - band - gap
        if train_stop < patch_size:
            raise DataError(
                f"{pair.name}: image {pair.shape} is too small to hold out a validation band: it needs "
                f"{patch_size + gap + band} px along its longer side (a {patch_size} px training patch, "
                f"a {gap} px gap wider than the network's receptive field, a {band} px band); "
                "use a larger image, a smaller patch size, separate validation images, or validation fraction 0")
        region = RegionSplit(pair.name, axis, train_stop, extent - band, extent)
        train.append(_crop_pair(pair, axis, 0, train_stop, f"{pair.name} (training part)"))
        val.append(_crop_pair(pair, axis, region.band_start, extent, f"{pair.name} (validation band)"))
        regions.append(region)
    return train, val, regions


def _crop_pair(pair: ImagePair, axis: int, start: int, stop: int, name: str) -> ImagePair:
    window = (slice(None), slice(start, stop)) if axis == 0 else (slice(None), slice(None), slice(start, stop))
    return ImagePair(name, np.ascontiguousarray(pair.input[window]), np.ascontiguousarray(pair.target[window]))


# ----------------------------------------------------------------------------- patches and batches


def random_patch(pair: ImagePair, patch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``patch_size²`` window of input and target: ``(C_in, p, p)``, ``(C_out, p, p)``."""
    height, width = pair.shape
    if height < patch_size or width < patch_size:
        raise DataError(f"{pair.name}: image {pair.shape} is smaller than the patch size {patch_size}")
    y = int(rng.integers(0, height - patch_size + 1))
    x = int(rng.integers(0, width - patch_size + 1))
    window = (slice(None), slice(y, y + patch_size), slice(x, x + patch_size))
    return pair.input[window], pair.target[window]


def random_dihedral(
    inp: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/90° rotations, the same for input and target ``(C, H, W)`` (square for rotations)."""
    k = int(rng.integers(4)) if inp.shape[-1] == inp.shape[-2] else 2 * int(rng.integers(2))
    flip = bool(rng.integers(2))
    out = []
    for array in (inp, target):
        array = np.rot90(array, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(array[..., ::-1] if flip else array))
    return out[0], out[1]


def normalize_pair(
    pair: ImagePair, task: str | TaskSpec, input_normalizer: Normalizer | None = None, target_normalizer: Normalizer | None = None
) -> ImagePair:
    """The pair mapped to ~[−1, 1] with the task's normalisers (per-image ones are fitted on the whole image)."""
    spec = get_task(task)
    input_normalizer = input_normalizer or spec.input_normalizer
    target_normalizer = target_normalizer or spec.target_normalizer
    try:
        return ImagePair(pair.name, input_normalizer.normalize(pair.input), target_normalizer.normalize(pair.target))
    except InputError as exc:
        raise DataError(f"{pair.name}: {exc}") from exc


def _check_channels(pair: ImagePair, spec: TaskSpec) -> None:
    if pair.input.ndim != 3 or pair.input.shape[0] != spec.input_channels:
        raise DataError(f"{pair.name}: input must be ({spec.input_channels}, H, W), got {pair.input.shape}")
    if pair.target.ndim != 3 or pair.target.shape[0] != spec.target_channels:
        raise DataError(f"{pair.name}: target must be ({spec.target_channels}, H, W), got {pair.target.shape}")
    if pair.input.shape[-2:] != pair.target.shape[-2:]:
        raise DataError(f"{pair.name}: input {pair.input.shape} and target {pair.target.shape} are on different grids")


def make_validation_set(
    pairs: Sequence[ImagePair],
    task: str | TaskSpec,
    patch_size: int = 64,
    max_patches: int = 64,
    input_normalizer: Normalizer | None = None,
    target_normalizer: Normalizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: F821
    """A fixed validation set ``(x_in, x_target)`` ``(N, C, p, p)`` float32 tensors, normalised like training.

    Non-overlapping tiles of every image on a regular grid (no augmentation, no
    randomness); if there are more than ``max_patches``, an evenly spaced subset.
    """
    import torch

    spec = get_task(task)
    if not len(pairs):
        raise DataError("no validation images")
    tiles_in, tiles_target = [], []
    for pair in pairs:
        _check_channels(pair, spec)
        height, width = pair.shape
        if height < patch_size or width < patch_size:
            raise DataError(f"{pair.name}: image {pair.shape} is smaller than the patch size {patch_size}")
        norm = normalize_pair(pair, spec, input_normalizer, target_normalizer)
        for y in range(0, height - patch_size + 1, patch_size):
            for x in range(0, width - patch_size + 1, patch_size):
                window = (slice(None), slice(y, y + patch_size), slice(x, x + patch_size))
                tiles_in.append(norm.input[window])
                tiles_target.append(norm.target[window])
    if len(tiles_in) > max_patches:
        keep = np.linspace(0, len(tiles_in) - 1, max_patches).round().astype(int)
        tiles_in = [tiles_in[i] for i in keep]
        tiles_target = [tiles_target[i] for i in keep]
    return torch.from_numpy(np.stack(tiles_in)), torch.from_numpy(np.stack(tiles_target))
