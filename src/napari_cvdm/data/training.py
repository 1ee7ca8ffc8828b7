"""What a training run trains on: its pairs, normalised, with fixed validation patches.

:func:`load_training_data` reads the source a :class:`~napari_cvdm.config.TrainConfig`
names (in-memory pairs, paired TIFF folders, or simulated pairs), holds out validation data
(whole images, or a band of each image when there are too few: :func:`hold_out`; or separate
pairs), checks the patch size, fits a residual QPI model's TIE base and normalises everything;
:meth:`TrainingData.draw_patches` draws the training patches. :func:`receptive_field` is how far
the network sees, which sets the gap between a band and its training part.
:func:`folder_pixel_size` reads the raw-input pixel size of a pair of folders.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..config import TrainConfig
from ..errors import InputError, ModelFileError
from ..residual import ResidualBase, TIEBase, training_base
from ..model.cvdm import BASE_LAYOUTS
from ..model.unet import DENOISER_PRESETS, UNetSize
from .datasets import (
    ImagePair, TaskSpec, get_task, load_pair_folders, make_validation_set, normalize_pair,
    pairs_from_arrays, random_dihedral, raw_pixel_size, random_patch, split_by_image, split_by_region,
)
from .normalize import Normalizer
from .simulate import QPISimulationConfig, SimulatedPairs, SRSimulationConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..checkpoint import ModelInfo

log = logging.getLogger(__name__)

@dataclass
class TrainingData:
    """Normalised training images, the fixed validation patches and what describes them."""

    spec: TaskSpec
    train_pairs: list[ImagePair]  # normalised (a physics base adds its phase as the last input channel)
    validation: tuple  # (y, x0) torch tensors (N, C, p, p), or None without validation images
    description: str
    input_pixel_size_um: float | None
    probabilities: np.ndarray = field(default_factory=lambda: np.ones(1))  # per training pair, by area
    physics_base: TIEBase | None = None  # of a residual QPI model
    residual_scale: float = 1.0
    validation_pairs: list[ImagePair] = field(default_factory=list)  # raw (unnormalised), for the calibration
    residual_base: ResidualBase | None = None  # the base kind the run trains (its model's, without s)
    split: dict = field(default_factory=dict)  # how validation was held out (:func:`hold_out`)

    def draw_patches(self, batch_size: int, patch_size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` random patches ``(B, C_in, p, p)``, ``(B, C_out, p, p)`` float32: each from a
        pair drawn with probability proportional to its area, flipped/rotated at random (input and
        target alike)."""
        inputs, targets = [], []
        for _ in range(batch_size):
            pair = self.train_pairs[int(rng.choice(len(self.train_pairs), p=self.probabilities))]
            inp, tgt = random_dihedral(*random_patch(pair, patch_size, rng), rng)
            inputs.append(inp)
            targets.append(tgt)
        return np.stack(inputs), np.stack(targets)


class _Source(NamedTuple):
    """The raw pairs of a run before normalisation; ``split`` says how validation was held out."""

    train_pairs: list[ImagePair]
    validation_pairs: list[ImagePair]
    description: str
    pixel_size_um: float | None
    split: dict


def unet_reach(size: UNetSize) -> int:
    """Receptive-field radius (pixels) of a :class:`~napari_cvdm.model.unet.UNet` of ``size``.

    The farthest an input pixel, or a γ-map pixel, can be from an output pixel it changes,
    walking the convolutions: 3×3 convolutions reach 1 pixel of their level (2^level input
    pixels), the stride-2 ones too, each level's γ embedding pools 2^level pixels and reaches 3
    of them (7×7). Self-attention at the lowest level and GroupNorm reach the whole tile the
    network is given; they are left out, as a training patch never holds a validation pixel.
    """
    levels, blocks = len(size.channel_mults), size.blocks_per_level
    reach, entry = 1, []  # the input convolution
    for level in range(levels):
        entry.append(reach)
        reach += 2 * blocks * 2**level + (2**level if level < levels - 1 else 0)
    reach += 4 * 2 ** (levels - 1)  # the two middle blocks
    for level in reversed(range(levels)):
        reach += 2 * (blocks + 1) * 2**level + (2 ** (level - 1) if level else 0)
    reach += 1  # the output convolution
    gamma = max(2**level - 1 + 3 * 2**level + reach - entry[level] for level in range(levels))
    return max(reach, gamma)


def receptive_field(preset: str, base_kind: str) -> int:
    """Receptive-field radius (pixels) of a model: its denoiser's, plus its base predictor's
    when it has one (the denoiser reads the base). The schedule network's λ map (a smooth noise
    rate predicted at low resolution) and a TIE base (a Fourier solve of whatever image it is
    given) are left out."""
    reach = unet_reach(DENOISER_PRESETS[preset])
    return 2 * reach if BASE_LAYOUTS[base_kind].predictor else reach


def hold_out(pairs: list[ImagePair], config: TrainConfig, reach: int) -> tuple[list, list, dict]:
    """``(training pairs, validation pairs, split)``: whole images when ``validation_split`` is
    ``image``, or ``auto`` with enough images; else a band of each image, ``reach + 1`` pixels
    away from its training part. ``split`` describes it for the log and the model card."""
    if config.validation_fraction == 0:
        return pairs, [], {"kind": "none", "words": "no validation data (validation fraction 0)"}
    n_held = max(1, round(config.validation_fraction * len(pairs)))
    by_image = config.validation_split == "image" or (config.validation_split == "auto" and n_held < len(pairs))
    if by_image:
        train, validation = split_by_image(pairs, config.validation_fraction, config.seed)
        return train, validation, {"kind": "image", "images": len(validation),
                                   "words": f"{len(validation)} whole image(s) held out of {len(pairs)}"}
    train, validation, regions = split_by_region(pairs, config.validation_fraction, config.patch_size, reach + 1)
    words = (f"a band of each of {len(pairs)} image(s) held out, {reach + 1} px from its training part "
             f"(the network's receptive-field radius is {reach} px): "
             + "; ".join(r.words() for r in regions))
    return train, validation, {"kind": "region", "gap_px": reach + 1, "receptive_field_px": reach,
                               "bands": [dataclasses.asdict(r) for r in regions], "words": words}


def folder_pixel_size(input_dir: Path, target_dir: Path, factor: int) -> float | None:
    """Raw-input pixel size (µm) from the first pair (:func:`~.datasets.raw_pixel_size`): the
    target's pixel × factor, else the input's; DataError when the two disagree."""
    from ..io import list_images, read_image

    target_path, source_path = list_images([target_dir])[0], list_images([input_dir])[0]
    target, source = read_image(target_path), read_image(source_path)
    return raw_pixel_size(source.pixel_size_um, target.pixel_size_um, source.array.shape[-2:],
                          target.array.shape[-2:], factor,
                          str(source_path), str(target_path))


def load_training_data(config: TrainConfig, pairs: tuple[Sequence, Sequence] | None = None,
                       base: ModelInfo | None = None,
                       validation: tuple[Sequence, Sequence] | None = None) -> TrainingData:
    """Training and validation data for ``config`` (see :class:`TrainConfig` for the sources),
    normalised as the base model ``base`` was when fine-tuning. ``validation``: separate in-memory
    validation pairs ``(inputs, targets)`` (then nothing is held out of ``pairs``)."""
    spec = _task_spec(config, base)
    residual_base = training_base(config.formulation, spec.name, config.base_correction, spec.target_channels,
                                  spec.input_channels, None if base is None else base.config)
    reach = receptive_field(base.config.preset if base is not None else config.preset, residual_base.kind)
    source = _source(config, spec, pairs, validation, reach)
    small = [p.name for p in source.train_pairs + source.validation_pairs if min(p.shape) < config.patch_size]
    if small:
        raise InputError(f"Image {small[0]} is smaller than the patch size {config.patch_size}; "
                         "lower patch_size or use larger images.")
    physics_base = None
    if residual_base.needs_tie:
        physics_base = _physics_base(config, spec, source, base, pairs is not None)

    def normalised(pair):
        return _normalized_pair(pair, spec, residual_base, physics_base)

    train_pairs = [normalised(p) for p in source.train_pairs]
    validation_set = None
    if source.validation_pairs:
        # the pairs are normalised (and given their base channel) here, so the set keeps them as they are
        identity = Normalizer.fixed(-1.0, 1.0)
        as_is = dataclasses.replace(spec, input_channels=train_pairs[0].input.shape[0],
                                    input_normalizer=identity, target_normalizer=identity)
        validation_set = make_validation_set([normalised(p) for p in source.validation_pairs],
                                             as_is, config.patch_size, config.validation_patches)
    area = np.array([p.shape[0] * p.shape[1] for p in train_pairs], dtype=np.float64)
    scale = base.config.residual_scale if base is not None else residual_base.fitted_scale(train_pairs)
    log.info("validation: %s", source.split["words"])
    return TrainingData(spec, train_pairs, validation_set, source.description, source.pixel_size_um,
                        area / area.sum(), physics_base, scale, source.validation_pairs, residual_base, source.split)


def _source(config: TrainConfig, spec: TaskSpec, pairs, validation, reach: int) -> _Source:
    """The raw pairs of the run: given, from folders or simulated, with validation held out."""
    held = validation is None and config.validation_input_dir is None
    if pairs is not None:
        given = pairs_from_arrays(list(pairs[0]), list(pairs[1]), spec)
        source = _split(config, given, f"{len(given)} in-memory image pair(s)", config.input_pixel_size_um,
                        reach if held else None)
    elif config.input_dir is not None:
        source = _folder_source(config, spec, reach if held else None)
    else:
        return _simulated_source(config)
    separate = None
    if validation is not None:
        separate = pairs_from_arrays(list(validation[0]), list(validation[1]), spec,
                                     [f"validation image {i}" for i in range(len(validation[0]))])
    elif config.validation_input_dir is not None:
        separate = load_pair_folders(config.validation_input_dir, config.validation_target_dir, spec)
    if separate is None:
        return source
    split = {"kind": "given", "images": len(separate),
             "words": f"{len(separate)} separate validation pair(s); nothing held out of the training pairs"}
    return source._replace(validation_pairs=separate, split=split)


def _task_spec(config: TrainConfig, base: ModelInfo | None = None) -> TaskSpec:
    """The task's data layout and normalisation; a fine-tuned model keeps its base model's normalisation."""
    if config.task != "generic":
        spec = get_task(config.task)
    else:
        spec = TaskSpec(
            name="generic", input_channels=config.input_channels, target_channels=config.target_channels,
            input_upsample=1, input_normalizer=Normalizer.per_image_percentile(),
            target_normalizer=Normalizer.per_image_percentile(),
            input_description=f"{config.input_channels}-channel image", target_description="target image",
        )
    if base is None:
        return spec
    if (base.config.y_channels, base.config.x_channels) != (spec.input_channels, spec.target_channels):
        raise InputError(f"{Path(str(config.init_model)).name} maps {base.config.y_channels} input channel(s) "
                         f"to {base.config.x_channels}, but {spec.name} pairs have {spec.input_channels} and "
                         f"{spec.target_channels}; it cannot be fine-tuned on them.")
    # the base weights only make sense on data normalised as they were trained
    try:
        return dataclasses.replace(
            spec,
            input_normalizer=Normalizer.from_dict(base.input_normalization) if base.input_normalization
            else spec.input_normalizer,
            target_normalizer=Normalizer.from_dict(base.target_normalization) if base.target_normalization
            else spec.target_normalizer,
        )
    except ValueError as exc:
        raise ModelFileError(f"{Path(str(config.init_model)).name} has an unusable normalisation: {exc}.") from None


def _split(config: TrainConfig, pairs: list[ImagePair], description: str, pixel_size: float | None,
           reach: int | None) -> _Source:
    """Given pairs, with validation held out (:func:`hold_out`); ``reach`` None: nothing held out
    (separate validation pairs come instead)."""
    if reach is None:
        return _Source(pairs, [], description, pixel_size, {})
    train, validation, split = hold_out(pairs, config, reach)
    return _Source(train, validation, description, pixel_size, split)


def _folder_source(config: TrainConfig, spec: TaskSpec, reach: int | None) -> _Source:
    pairs = load_pair_folders(config.input_dir, config.target_dir, spec)
    pixel_size = config.input_pixel_size_um
    if pixel_size is None:
        pixel_size = folder_pixel_size(Path(config.input_dir), Path(config.target_dir), spec.input_upsample)
    return _split(config, pairs, f"{len(pairs)} pair(s) from {config.input_dir} → {config.target_dir}", pixel_size,
                  reach)


def _simulated_source(config: TrainConfig) -> _Source:
    """``simulated_images`` pairs of the simulator; validation pairs from its own stream."""
    if config.task == "generic":
        raise InputError("A generic model needs data: give input_dir and target_dir, or image pairs.")
    # with a folder of photos, training and validation draw from disjoint files (split by file)
    try:
        stream = SimulatedPairs(config.task, config.simulated_size, seed=config.seed, source_dir=config.source_images)
    except ValueError as error:  # an empty folder, or a split without photos
        raise InputError(f"source_images: {error}") from None
    train_pairs = stream.take(config.simulated_images)
    n_validation = max(1, round(config.validation_fraction * config.simulated_images)) \
        if config.validation_fraction > 0 else 0
    validation_pairs = stream.with_split("validation").take(n_validation)
    objects = "phase objects" if config.task == "qpi" else "a fifth structure family, fluorophore densities,"
    sources = f"; {objects} from the training split of {config.source_images}" if config.source_images else ""
    description = (f"{config.simulated_images} simulated {config.task} pairs of {config.simulated_size}² px "
                   f"(napari_cvdm.data.simulate, seed {config.seed}{sources})")
    pixel_size = config.input_pixel_size_um
    if pixel_size is None:
        pixel_size = (SRSimulationConfig().target_pixel_um * SRSimulationConfig().factor
                      if config.task == "sr" else QPISimulationConfig().pixel_um)
    split = {"kind": "simulated", "images": n_validation,
             "words": f"{n_validation} pair(s) from the simulator's validation stream"}
    return _Source(train_pairs, validation_pairs, description, pixel_size, split)


def _physics_base(config: TrainConfig, spec: TaskSpec, source: _Source, base: ModelInfo | None,
                  pairs_given: bool) -> TIEBase:
    """The TIE base of a residual QPI model: the fine-tuned model's unless ``config.tie_method``
    names another solver, else fitted on the training pairs."""
    if base is not None and base.base:
        kept = TIEBase.from_dict(base.base)
        if config.tie_method in (None, kept.kind):
            return kept
        log.info("refitting the fine-tuned model's %s base as %s", kept.kind, config.tie_method)
    simulated = QPISimulationConfig()
    pixel_size, pairs = source.pixel_size_um, source.train_pairs
    if pixel_size is None:
        pixel_size = simulated.pixel_um
        log.warning("the data carry no pixel size; the TIE base assumes %g µm (set input_pixel_size_um)",
                    pixel_size)
    if config.input_dir is None and not pairs_given:
        wavelength, dz = simulated.wavelength_um, simulated.dz_um
    else:
        wavelength, dz = config.wavelength_um, config.dz_um
    target_range = spec.target_normalizer
    offset = 0.5 * (target_range.low[0] + target_range.high[0])
    physics_base, error = TIEBase.fit([p.input for p in pairs], [p.target for p in pairs],
                                      wavelength, dz, pixel_size, offset, config.tie_method)
    log.info("TIE base: %s, %s boundary, regulariser %.3g·σ̂^%g µm⁻⁴ (MAE %.4f rad on %d training image(s))",
             physics_base.kind, physics_base.boundary, physics_base.strength, physics_base.exponent, error,
             min(len(pairs), 16))
    return physics_base


def _normalized_pair(pair: ImagePair, spec: TaskSpec, residual_base: ResidualBase,
                     physics_base: TIEBase | None) -> ImagePair:
    """The pair normalised for training, its input as the base kind's model takes it
    (:meth:`~napari_cvdm.residual.bases.ResidualBase.training_pair`: a TIE base appends its phase,
    normalised like the target, and its noise-level map, and shifts the target to its mean phase)."""
    def normalize(stack: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        normalised = normalize_pair(ImagePair(pair.name, stack, target), spec)
        return normalised.input, normalised.target

    inputs, target = residual_base.training_pair(pair.input, pair.target, physics_base, normalize,
                                                 spec.target_normalizer.normalize)
    return ImagePair(pair.name, inputs, target)
