"""Model files: one safetensors file with JSON metadata. No pickle anywhere.

Layout: the model's ``state_dict`` as safetensors tensors, and under the
metadata key ``napari_cvdm`` one JSON object (:class:`ModelInfo`) holding the
format version, task, architecture, normalisation, physical pixel sizes,
upsampling factor, sampler defaults and a training summary. Loading checks
every part and raises :class:`ModelFileError` with one readable sentence for a
missing, corrupt, truncated, foreign or newer-version file.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import ModelFileError
from .model import CVDM, ModelConfig
from .model.samplers import DEFAULT_SAMPLER

FORMAT_VERSION = 1
METADATA_KEY = "napari_cvdm"
MODEL_SUFFIX = ".safetensors"
TASKS = ("sr", "qpi", "generic")
#: A safetensors header larger than this is not one of ours (and not worth parsing).
MAX_HEADER_BYTES = 16 * 1024 * 1024


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
    ``base``: the physics base of a residual QPI model (:class:`~napari_cvdm.base_estimate.TIEBase`).
    """

    task: str
    config: ModelConfig
    input_normalization: dict = field(default_factory=dict)
    target_normalization: dict = field(default_factory=dict)
    input_pixel_size_um: float | None = None
    upsampling_factor: int = 1
    target_unit: str = "a.u."
    sampler: dict = field(default_factory=lambda: {"name": DEFAULT_SAMPLER, "steps": 20, "n_samples": 8})
    training: dict = field(default_factory=dict)
    description: str = ""
    base: dict = field(default_factory=dict)

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
        fields = {k: v for k, v in data.items() if k != "format_version"}
        fields["config"] = ModelConfig.from_dict(fields["config"])
        return cls(**fields)

    @property
    def output_pixel_size_um(self) -> float | None:
        if self.input_pixel_size_um is None:
            return None
        return self.input_pixel_size_um / self.upsampling_factor


def save_model(path: str | os.PathLike, model: CVDM, info: ModelInfo,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` and ``info`` to ``path`` atomically (temporary file, then rename).

    ``dtype=torch.float16`` halves the file; weights are cast back to float32 on load.
    """
    if info.config != model.config:
        raise ValueError("ModelInfo.config does not match the model's config")
    path = Path(path)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    payload = save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(info.to_dict())})
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
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    try:  # the header alone: pickers list large models without reading their weights
        with path.open("rb") as handle:
            start = handle.read(8)
            size = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
            head = start + handle.read(min(size, MAX_HEADER_BYTES + 1))
            file_size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"Cannot read model file {path}: {exc.strerror}.") from None
    return _parse_info(path, _read_header(path, head, file_size))


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[CVDM, ModelInfo]:
    """Load a model file; returns the model in eval mode (float32) on ``device`` and its info."""
    path = Path(path)
    data = _read_bytes(path)
    info = _parse_info(path, _read_header(path, data))
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for damaged data
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


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"Cannot read model file {path}: {exc.strerror}.") from None


def _read_header(path: Path, data: bytes, file_size: int | None = None) -> dict:
    """Parse the safetensors header without trusting any of it.

    ``data`` is the whole file, or its start when ``file_size`` gives the full length.
    """
    not_ours = f"{path.name} is not a napari-cvdm model file"
    file_size = len(data) if file_size is None else file_size
    if len(data) < 8:
        raise ModelFileError(f"{not_ours} (it is empty or truncated).")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > MAX_HEADER_BYTES or header_size > min(len(data), file_size) - 8:
        raise ModelFileError(f"{not_ours} (not a safetensors file, or truncated).")
    try:
        header = json.loads(data[8:8 + header_size])
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{not_ours} (its header is not valid safetensors JSON).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{not_ours} (its header is not valid safetensors JSON).")
    data_size = file_size - 8 - header_size
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if ends and max(ends) > data_size:
        raise ModelFileError(f"{path.name} is truncated: it ends before its weights do.")
    return header


def _parse_info(path: Path, header: dict) -> ModelInfo:
    metadata = header.get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{path.name} is a safetensors file but not a napari-cvdm model (no '{METADATA_KEY}' metadata)."
        )
    try:
        raw = json.loads(metadata[METADATA_KEY])
        version = int(raw["format_version"])
    except (ValueError, KeyError, TypeError):
        raise ModelFileError(f"{path.name} has unreadable napari-cvdm metadata.") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} was written by a newer napari-cvdm (model format {version}, this version "
            f"reads up to {FORMAT_VERSION}); update napari-cvdm to use it."
        )
    try:
        return ModelInfo.from_dict(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path.name} has invalid napari-cvdm metadata: {exc}.") from None
