"""Model files: one safetensors file with JSON metadata. No pickle anywhere.

Layout: the model's ``state_dict`` as safetensors tensors, and under the
metadata key ``napari_cvdm`` one JSON object (:class:`ModelInfo`) holding the
format version, task, architecture, normalisation, physical pixel sizes,
upsampling factor, sampler defaults and a training summary. safetensors reads
the header (and refuses empty, truncated and foreign files); pydantic checks
every metadata value against :class:`ModelInfo`'s annotated types and bounds.
Any problem is a :class:`ModelFileError` with one readable sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Iterator, Literal

import torch
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes
from typing_extensions import TypedDict

from .errors import ModelFileError
from .model import CVDM, ModelConfig
from .model.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_CONSISTENCY_STRENGTH, MAX_SAMPLER_STEPS, MAX_SAMPLES

#: 2 added the residual formulation (ModelConfig.base, ...) and ModelInfo.base/calibration; 1 still loads.
FORMAT_VERSION = 2
METADATA_KEY = "napari_cvdm"
MODEL_SUFFIX = ".safetensors"
TASKS = ("sr", "qpi", "generic")
#: Bounds on metadata values: beyond them a file is damaged or hostile, not a model.
MAX_UPSAMPLING = 8

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _model_config(value):
    """ModelConfig checks its own values (from_dict); pydantic then checks their types."""
    if not isinstance(value, dict):
        return value  # pydantic reports the wrong type
    try:
        config = ModelConfig.from_dict(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from None
    return TypeAdapter(ModelConfig).validate_json(json.dumps(config.to_dict()), strict=True)


@with_config(ConfigDict(extra="allow"))
class SamplerDefaults(TypedDict, total=False):
    """A model's default sampling settings; each is optional (reconstruction fills in the rest)."""

    name: str
    steps: Annotated[int, Field(ge=1, le=MAX_SAMPLER_STEPS)]
    n_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    eta: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    clip: PositiveFinite | None
    grid: str
    log_snr_range: tuple[float | None, float]
    consistency_strength: Annotated[float, Field(ge=0, le=MAX_CONSISTENCY_STRENGTH, allow_inf_nan=False)]


@with_config(ConfigDict(extra="forbid"))
@dataclass
class ModelInfo:
    """Everything besides the weights that is needed to use a model correctly.

    ``task``: ``sr`` (widefield → SIM-like), ``qpi`` (defocus stack → phase)
    or ``generic``. ``input_normalization`` / ``target_normalization``: the
    data normaliser's ``to_dict()``. ``input_pixel_size_um``: pixel size of the
    raw input the model was trained on; the output pixel size is that divided
    by ``upsampling_factor``. ``target_unit``: unit of the denormalised output
    (``rad`` for phase). ``sampler``: default sampler, steps and sample count.
    ``training``: free-form summary (data, steps, device, wall time, metrics).
    ``base``: the physics base of a residual QPI model (:class:`~napari_cvdm.residual.tie_base.TIEBase`);
    ``calibration``: the uncertainty calibration (both empty when unused).
    The annotations are the file format's schema: :func:`read_model_info` enforces them.
    """

    task: Literal[TASKS]
    config: Annotated[ModelConfig, BeforeValidator(_model_config)]
    input_normalization: dict = field(default_factory=dict)
    target_normalization: dict = field(default_factory=dict)
    input_pixel_size_um: PositiveFinite | None = None
    upsampling_factor: Annotated[int, Field(ge=1, le=MAX_UPSAMPLING)] = 1
    target_unit: str = "a.u."
    sampler: SamplerDefaults = field(
        default_factory=lambda: {"name": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS, "n_samples": 8})
    training: dict = field(default_factory=dict)
    description: str = ""
    base: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if int(self.upsampling_factor) < 1:
            raise ValueError("upsampling_factor must be a positive integer")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        """Validate ``data`` (a ``to_dict()`` result) against the schema; ValueError names the field."""
        fields = {k: v for k, v in data.items() if k != "format_version"}
        try:
            return _SCHEMA.validate_json(json.dumps(fields), strict=True)
        except ValidationError as exc:
            raise ValueError(_first_problem(exc)) from None

    @property
    def output_pixel_size_um(self) -> float | None:
        if self.input_pixel_size_um is None:
            return None
        return self.input_pixel_size_um / self.upsampling_factor


_SCHEMA = TypeAdapter(ModelInfo)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_problem(exc: ValidationError) -> str:
    """The first validation error as 'field.sub: problem (got value)'."""
    errors = exc.errors(include_url=False)
    first, kind = errors[0], errors[0]["type"]
    where = ".".join(str(part) for part in first["loc"]) or "metadata"
    if kind == "missing":
        problem = f"{where} is missing"
    elif kind == "unexpected_keyword_argument":
        problem = f"{where} is not a field of this model format"
    elif kind == "value_error":  # raised by our own checks: their message is already a sentence part
        problem = f"{where}: {first['msg'].removeprefix('Value error, ')}"
    else:
        problem = f"{where}: {first['msg'][:1].lower()}{first['msg'][1:]} (got {_short(first.get('input'))})"
    return problem + (f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else "")


def save_model(path: str | os.PathLike, model: CVDM, info: ModelInfo,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` and ``info`` to ``path`` atomically (temporary file, then rename).

    ``dtype=torch.float16`` halves the file; weights are cast back to float32 on load.
    ValueError, before anything is written, if ``info`` would not be readable again.
    """
    if info.config != model.config:
        raise ValueError("ModelInfo.config does not match the model's config")
    metadata = info.to_dict()
    ModelInfo.from_dict(metadata)  # never write a file that read_model_info refuses
    path = Path(path)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    payload = save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(metadata)})
    write_atomically(path, payload)
    return path


def write_atomically(path: Path, payload: bytes) -> None:
    """Write bytes so that ``path`` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes the file private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read and validate only the metadata (fast: used for model pickers and cards)."""
    path = Path(path)
    with _opened(path) as handle:
        return _parse_info(path, handle.metadata())


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[CVDM, ModelInfo]:
    """Load a model file; returns the model in eval mode (float32) on ``device`` and its info.

    The metadata is validated before any weight is read; metadata and weights come
    from one memory-mapped handle (what ``safetensors.torch.load_file`` does), so
    both belong to the same version of a file that is being replaced.
    """
    path = Path(path)
    with _opened(path) as handle:
        info = _parse_info(path, handle.metadata())
        try:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{path.name} is damaged: its weights cannot be read ({exc}).") from None
    model = CVDM(info.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problem = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
                   if unexpected else f"wrong shapes for {wrong_shape[:3]}")
        raise ModelFileError(f"{path.name} does not match the architecture it declares: {problem}.")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return model.to(device).eval(), info


@contextmanager
def _opened(path: Path) -> Iterator:
    """A safetensors handle on ``path``: its header is parsed and checked, no weight is read."""
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        raise ModelFileError(_header_problem(path, str(exc))) from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read model file {path}: {exc.strerror or exc}.") from None
    with handle:
        yield handle


def _header_problem(path: Path, message: str) -> str:
    """One sentence for safetensors' refusal of a header."""
    not_ours = f"{path.name} is not a napari-cvdm model file"
    detail = message.removeprefix("Error while deserializing header: ")
    if "header too small" in detail:
        return f"{not_ours} (it is empty or truncated)."
    if "header too large" in detail or "invalid header length" in detail:
        return f"{not_ours} (not a safetensors file, or truncated)."
    if "incomplete metadata" in detail:
        return f"{path.name} is truncated or damaged: its length does not match its header."
    return f"{not_ours} (its safetensors header is invalid: {detail})."


def _parse_info(path: Path, metadata: dict[str, str] | None) -> ModelInfo:
    if not metadata or METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{path.name} is a safetensors file but not a napari-cvdm model (no '{METADATA_KEY}' metadata)."
        )
    try:
        raw = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path.name} has unreadable napari-cvdm metadata (not a JSON object).")
    version = raw.get("format_version")
    if type(version) is not int or version < 1:  # bool is an int subclass: refused too
        raise ModelFileError(f"{path.name} has invalid napari-cvdm metadata: format_version must be "
                             f"a positive integer (got {_short(version)}).")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} was written by a newer napari-cvdm (model format {version}, this version "
            f"reads up to {FORMAT_VERSION}); update napari-cvdm to use it."
        )
    try:
        return ModelInfo.from_dict(raw)
    except ValueError as exc:
        raise ModelFileError(f"{path.name} has invalid napari-cvdm metadata: {exc}.") from None
