"""Training settings: :class:`TrainConfig`, a typed, validated record, and config files.

``TrainConfig`` is a standard-library dataclass validated through a pydantic
``TypeAdapter`` (strict types, ``extra="forbid"``, ranges). A dataclass rather than
a ``BaseModel`` because the CLI, the Train widget and the engine use it as one
(``dataclasses.fields``/``replace``/``asdict``), and because building one stays
cheap and never raises: validation happens in :meth:`TrainConfig.check` and
:meth:`TrainConfig.from_dict`, which turn the first bad field into one
:class:`~napari_cvdm.errors.InputError` sentence naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from .errors import InputError
from .physics.optics import QPI_DZ_UM, QPI_WAVELENGTH_UM
from .model import SAMPLERS
from .model.samplers import LOG_SNR_CEILING
from .model.schedule import SCHEDULE_KINDS
from .model.unet import DENOISER_PRESETS

TRAIN_TASKS = ("sr", "qpi", "generic")
#: How validation data are held out of the training pairs: ``auto`` (whole images when there
#: are enough, else a band of each image), ``image``, ``region`` (a band of each image).
VALIDATION_SPLITS = ("auto", "image", "region")
#: A new model's sampling defaults: the measured best of docs/method.md (DPM-Solver++ 2M SDE,
#: 8 steps on a log-SNR grid ending at 8: the 20-step quality in less time), as the shipped
#: residual models record them. A fine-tuned model keeps its parent's instead.
MEASURED_SAMPLER = {"name": "dpm_solver_2m_sde", "steps": 8, "eta": 1.0, "grid": "log_snr",
                    "log_snr_range": (None, 8.0)}
#: Steps of a fine-tuning run the Train widget proposes (11.5 minutes of the ``small`` preset
#: on a 2-core CPU).
FINE_TUNE_STEPS = 1000
FORMULATIONS = ("paper", "residual")
#: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = r"^\s*(auto|cpu|mps|cuda(:\d+)?)\s*$"
#: Upper bound of step counts and seeds: far beyond any real run, small enough for every counter.
MAX_STEPS = 100_000_000
MAX_SEED = 2**63 - 1

Count = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Every = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Side = Annotated[int, Field(ge=1, le=65_536)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


@dataclass
class TrainConfig:
    """Everything that defines a training run. Lengths in pixels of the target grid.

    Data: ``input_dir``/``target_dir`` (paired TIFF folders matched by file name), or
    in-memory pairs given to :func:`napari_cvdm.train.train`, or else ``simulated_images``
    simulated pairs of ``simulated_size`` pixels of ``task`` (``sr`` or ``qpi``) made up front.
    ``validation_split``: one of :data:`VALIDATION_SPLITS`; ``region`` holds out a band of each
    image (``validation_fraction`` of its longer side, at least a patch), separated from the training
    part by more than the network's receptive field (:func:`napari_cvdm.data.training.receptive_field`).
    ``validation_input_dir``/``validation_target_dir``: separate validation pairs instead (then
    nothing is split off the training data).
    ``batch_size`` is per process. ``validate_every``/``checkpoint_every`` count steps
    (0 = only at the end). ``precision``: ``auto`` (bf16 autocast on CUDA), ``fp32``
    or ``bf16``. ``sampler``/``sample_steps``/``sample_log_snr_max`` (end of the log-SNR grid) and
    ``n_samples`` become the model's reconstruction defaults; None: the fine-tuned model's, else
    :data:`MEASURED_SAMPLER`. Validation samples ``validation_samples`` per patch with
    ``validation_sample_steps`` steps of the same sampler. ``input_pixel_size_um``
    overrides the pixel size read from the data (raw input grid, µm).
    ``generic`` models take ``input_channels`` and predict ``target_channels``.
    ``init_model``: fine-tune — start from the weights of this model file (e.g. a shipped
    model) instead of a random network; its task must match, and its architecture
    (preset, schedule) and normalisation are used whatever ``preset``/``schedule`` say.
    ``overwrite``: an existing ``output`` (and an earlier run's checkpoint) may be replaced;
    without it such a run is refused, unless it resumes its own run.
    ``formulation``: ``residual`` (predict-and-refine: QPI refines a TIE base, SR a jointly
    trained direct predictor) or ``paper`` (the CVDM of the paper); see
    :mod:`napari_cvdm.model.cvdm`. ``wavelength_um``/``dz_um``: the QPI optics of the data
    (the physics base needs them; simulated data use the simulator's). ``source_images``: a
    folder of source photos for the simulator, its training split only (QPI: the phase objects,
    None: the built-in synthetic scenes; SR: a fifth structure family, the photos as
    fluorophore densities).
    ``tie_method``: the TIE solver of a residual QPI model's base (``us_tie`` or ``fft_tie``,
    :mod:`napari_cvdm.residual.tie_base`); None: the fine-tuned model's, else whichever fits the
    training pairs better. Naming
    another solver than the fine-tuned model's refits its base on the training pairs.
    ``base_correction``: a residual QPI model's base becomes the TIE phase plus a jointly trained
    direct (L2) prediction of its residual (``physics_predictor`` in :mod:`napari_cvdm.model.cvdm`);
    fine-tuning a model without one adds it (starting as that model), a model with one keeps it.
    ``calibrate``: at the end of the run, calibrate the error bars on up to 4 validation crops
    (:mod:`napari_cvdm.uncertainty.calibrate`) and store the calibration in the exported model.
    """

    task: Literal["sr", "qpi", "generic"] = "sr"
    preset: str = "small"
    schedule: str = "cvdm"
    patch_size: Side = 64
    batch_size: Count = 8
    steps: Count = 10_000
    learning_rate: Positive = 2e-4
    warmup_steps: Every = 200
    weight_decay: NonNegative = 1e-4
    grad_clip: Positive = 1.0
    ema_decay: Fraction = 0.999
    validation_fraction: Fraction = 0.1
    validation_split: Literal["auto", "image", "region"] = "auto"
    validation_input_dir: str | None = None
    validation_target_dir: str | None = None
    validate_every: Every = 500
    validation_patches: Count = 16
    validation_samples: Count = 2
    validation_sample_steps: Count = 10
    checkpoint_every: Every = 500
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    output: str = "models/model.safetensors"
    input_dir: str | None = None
    target_dir: str | None = None
    simulated_images: Count = 128
    simulated_size: Side = 128
    input_pixel_size_um: Positive | None = None
    input_channels: Annotated[int, Field(ge=1, le=1024)] = 1
    target_channels: Annotated[int, Field(ge=1, le=1024)] = 1
    sampler: str | None = None
    sample_steps: Count | None = None
    sample_log_snr_max: Annotated[float, Field(gt=0, le=LOG_SNR_CEILING, allow_inf_nan=False)] | None = None
    n_samples: Count = 8
    max_bad_steps: Count = 20
    description: str = ""
    init_model: str | None = None
    overwrite: bool = False
    formulation: Literal["paper", "residual"] = "residual"
    wavelength_um: Positive = QPI_WAVELENGTH_UM
    dz_um: Positive = QPI_DZ_UM
    source_images: str | None = None
    calibrate: bool = True
    tie_method: Literal["fft_tie", "us_tie"] | None = None
    base_correction: bool = False

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True, revalidate_instances="always")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a mapping (a config file's contents, optionally under ``[train]``), validated."""
        if not isinstance(data, dict):
            raise InputError(f"Training settings must be a mapping of names to values (got {type(data).__name__}).")
        flat = data.get("train") if set(data) == {"train"} else data
        if not isinstance(flat, dict):
            raise InputError(f"The [train] section must hold settings (got {flat!r}).")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise InputError(f"Unknown training setting(s) {', '.join(map(str, unknown))}; "
                             f"valid settings are: {', '.join(sorted(names))}.")
        return _validated(dict(flat))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a TOML file (``.toml``) or, when PyYAML is installed, a YAML file (``.yaml``/``.yml``)."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise InputError naming the first unusable setting (type, range, choice, files)."""
        _validated({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, choices in (("preset", DENOISER_PRESETS), ("schedule", SCHEDULE_KINDS), ("sampler", SAMPLERS)):
            if getattr(self, name) not in choices and not (name == "sampler" and self.sampler is None):
                raise InputError(f"Unknown {name} '{getattr(self, name)}'; choose one of: {', '.join(choices)}.")
        for name, given, role in (("tie_method", self.tie_method is not None, "is the TIE solver of"),
                                  ("base_correction", self.base_correction, "corrects")):
            if given and (self.task != "qpi" or self.formulation != "residual"):
                raise InputError(f"{name} {role} a residual QPI model's TIE base; "
                                 f"this run is a {self.formulation} {self.task} model.")
        if (self.input_dir is None) != (self.target_dir is None):
            raise InputError("Give both input_dir and target_dir (paired folders), or neither (simulated data).")
        if (self.validation_input_dir is None) != (self.validation_target_dir is None):
            raise InputError("Give both validation_input_dir and validation_target_dir, or neither.")
        if not str(self.output).endswith(".safetensors"):
            raise InputError(f"The output model file must end in .safetensors (got {self.output}).")
        if self.source_images is not None and not Path(self.source_images).expanduser().is_dir():
            raise InputError(f"source_images: the folder {self.source_images} does not exist.")
        if self.init_model is not None and \
                Path(self.init_model).expanduser().resolve() == Path(self.output).expanduser().resolve():
            raise InputError(f"Fine-tuning {Path(self.init_model).name} would overwrite it; "
                             "choose another output file.")

    @property
    def run_dir(self) -> Path:
        """Folder beside the exported model with checkpoints and logs: ``name.run``."""
        output = Path(self.output)
        return output.with_name(output.name[: -len(".safetensors")] + ".run")


_ADAPTER = TypeAdapter(TrainConfig)
_PATH_FIELDS = ("output", "input_dir", "target_dir", "init_model", "source_images", "validation_input_dir",
                "validation_target_dir")


def _validated(values: dict) -> TrainConfig:
    """A TrainConfig from ``values`` (paths may be ``os.PathLike``); InputError naming the first bad field."""
    for name in _PATH_FIELDS:
        if isinstance(values.get(name), os.PathLike):
            values[name] = os.fspath(values[name])
    try:
        return _ADAPTER.validate_python(TrainConfig(**values))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(map(str, error["loc"])) or "settings"
        value = error.get("input")
        shown = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
        raise InputError(f"Training setting {name}: {_readable(error)} (got {shown}).") from None


def _readable(error: dict) -> str:
    """Pydantic's message, phrased for a config file (an integer is not 'a valid integer' of Python)."""
    if error["type"] == "string_pattern_mismatch":
        return "must be auto, cpu, mps, cuda or cuda:N"
    return error["msg"].replace("Input should be", "must be")


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in a TOML or YAML config file; InputError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name} is not a UTF-8 text file (byte {exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror}.") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InputError(f"{path.name} is YAML but PyYAML is not installed; use a TOML file.") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path.name} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path.name} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name} must hold a mapping of settings.")
    return data
