"""How to reconstruct: every setting once, with its type, bound, default and meaning; and the devices.

Each field of :class:`ReconstructionSettings` carries a :class:`Bound` in its metadata. The
CLI's flags (:func:`napari_cvdm.cli`), the Reconstruct widget's ranges and defaults and
:meth:`ReconstructionSettings.check` all read it, so a limit is written here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..model.samplers import GRIDS, LOG_SNR_CEILING, MAX_CONSISTENCY_STRENGTH, MAX_SAMPLER_STEPS, MAX_SAMPLES, SAMPLERS

PRECISIONS = ("auto", "fp32", "bf16")
DEVICE_KINDS = ("auto", "cpu", "mps", "cuda")
#: Bounds that keep a setting from exhausting memory or time on its own.
MAX_SEED = 2**63 - 1
MAX_SIDE = 1_000_000
#: Smallest tile side (output pixels).
MIN_TILE_SIZE = 16


@dataclass(frozen=True)
class Bound:
    """A setting's range and meaning. ``low``/``high`` are inclusive (``low`` exclusive when ``above``);
    ``choices`` lists the allowed strings; ``none`` says what None means (None: not allowed); ``flag`` names a command-line switch
    whose wording the setting's name would not give."""

    help: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] | None = None
    none: str | None = None
    flag: str | None = None

    def words(self) -> str:
        """The range as words, e.g. ``between 1 and 10000``, ``in (0, 20]``, ``at least 0``."""
        if self.above:
            return f"in ({self.low:g}, {self.high:g}]"
        if self.high is None:
            return f"at least {self.low:g}"
        return f"between {self.low:g} and {self.high:g}"


def _setting(default, help: str, **bound) -> dataclasses.Field:
    return field(default=default, metadata={"bound": Bound(help, **bound)})


@dataclass
class ReconstructionSettings:
    """How to reconstruct; each field's meaning, range and default in its :class:`Bound` (``BOUNDS``).

    Tiles are fixed by the settings and the image alone, never by the machine, so a seed gives
    the same result everywhere. ``max_batch`` and ``precision`` change the result only by float
    rounding; ``channels_last`` and ``compile`` not at all beyond it.
    """

    n_samples: int = _setting(8, "samples per image: the mean and variance are over these",
                              low=1, high=MAX_SAMPLES)
    sampler: str | None = _setting(None, "the sampler", choices=SAMPLERS, none="the model's")
    steps: int | None = _setting(None, "denoising steps per sample", low=1, high=MAX_SAMPLER_STEPS,
                                 none="the model's")
    tile_size: int | None = _setting(320, "largest tile side in output pixels (tiles are spread evenly); "
                                          "smaller uses less memory", low=MIN_TILE_SIZE, high=MAX_SIDE,
                                     none="the whole image at once")
    tile_overlap: int = _setting(32, "overlap of neighbouring tiles in output pixels, at most half the tile",
                                 low=0, high=MAX_SIDE)
    device: str = _setting("auto", "auto (CUDA, else MPS, else CPU), cpu, mps, cuda or cuda:N")
    seed: int = _setting(0, "random seed: the same seed gives the same samples", low=0, high=MAX_SEED)
    keep_samples: bool = _setting(False, "also return the N individual samples")
    precision: str = _setting("auto", "network precision: auto = bf16 on CUDA, else fp32", choices=PRECISIONS)
    eta: float | None = _setting(None, "η of ddim / ancestral / dpm_solver_2m_sde (0: deterministic)",
                                 low=0.0, high=1.0, none="0, 1, 1")
    max_batch: int | None = _setting(None, "samples run through the network together (a round)",
                                     low=1, high=MAX_SAMPLES, none="4 for a 320² tile, more for smaller ones")
    grid: str | None = _setting(None, "the sampler's time grid", choices=GRIDS, none="the model's")
    log_snr_max: float | None = _setting(None, "last log-SNR of the log_snr grid before t = 0",
                                         low=0.0, high=LOG_SNR_CEILING, above=True, none="the model's")
    channels_last: bool = _setting(False, "run the network on NHWC tensors (GPUs)")
    compile: bool = _setting(False, "torch.compile the network (first call slow; pays off on large images)")
    consistency_strength: float | None = _setting(
        None, "strength ζ of the sampler's data-consistency step: each x̂0 is moved toward the images that "
              "explain the input, weighted by its noise (0: off)", low=0.0, high=MAX_CONSISTENCY_STRENGTH,
        none="the model's; 0 if none")
    base_variance: bool = _setting(True, "QPI models with a phase prior: add the TIE base's closed-form error "
                                         "variance (the large scales every sample shares) to the variance")
    shrink_refinement: bool = _setting(True, "residual models: the mean shrinks the refinement toward the base "
                                             "by its sampling noise; switched off, the plain mean of the N samples",
                                       flag="--plain-mean")

    def check(self) -> None:
        """Raise InputError naming the first unusable setting (type, range or choice)."""
        for name, bound in BOUNDS.items():
            _check_value(name, getattr(self, name), bound, _kind(name))
        if self.tile_size is not None and self.tile_overlap > self.tile_size // 2:
            raise InputError(f"Tile overlap must be between 0 and half the tile size "
                             f"({self.tile_size // 2}); got {self.tile_overlap}.")
        base, colon, index = str(self.device).strip().lower().partition(":")
        if base not in DEVICE_KINDS or (colon and (base == "auto" or not index.isdigit())):
            raise InputError(f"Unknown device {self.device!r}; choose auto, cpu, mps, cuda or cuda:N.")

    @classmethod
    def from_dict(cls, values: dict) -> ReconstructionSettings:
        """Settings from a mapping of names to values, checked; InputError names an unknown one."""
        unknown = sorted(set(values) - set(BOUNDS))
        if unknown:
            raise InputError(f"Unknown reconstruction setting(s) {', '.join(map(str, unknown))}; "
                             f"valid settings are: {', '.join(BOUNDS)}.")
        settings = cls(**values)
        settings.check()
        return settings


#: Every setting's :class:`Bound`, in declaration order.
BOUNDS: dict[str, Bound] = {f.name: f.metadata["bound"] for f in dataclasses.fields(ReconstructionSettings)}
DEFAULTS = ReconstructionSettings()


def _kind(name: str) -> type:
    """The setting's value type: ``bool``, ``int``, ``float`` or ``str`` (from its annotation)."""
    annotation = next(f.type for f in dataclasses.fields(ReconstructionSettings) if f.name == name)
    return {"bool": bool, "int": int, "float": float}.get(str(annotation).split(" ")[0], str)


def _check_value(name: str, value, bound: Bound, kind: type) -> None:
    """InputError unless ``value`` is of ``kind`` and within ``bound`` (None only where it means something)."""
    if value is None and bound.none is not None:
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"Setting {name} must be True or False (got {value!r}).")
        return
    if bound.choices is not None:
        if not isinstance(value, str) or value not in bound.choices:
            raise InputError(f"Unknown {name} {value!r}; choose one of: {', '.join(bound.choices)}.")
        return
    if kind is str:
        if not isinstance(value, str):
            raise InputError(f"Setting {name} must be text (got {value!r}).")
        return
    numbers = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, numbers):
        what = "a whole number" if kind is int else "a number"
        raise InputError(f"Setting {name} must be {what} (got {value!r}).")
    low_ok = bound.low is None or (value > bound.low if bound.above else value >= bound.low)
    if not np.isfinite(float(value)) or not low_ok or (bound.high is not None and value > bound.high):
        raise InputError(f"Setting {name} must be {bound.words()} (got {value}).")


# ----------------------------------------------------------------------------- devices


def available_devices() -> list[str]:
    """``"auto"`` first, then the devices present here: ``"cuda"``, ``"mps"``, ``"cpu"``."""
    devices = ["auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (``auto`` = CUDA, else MPS, else CPU); InputError if absent."""
    name = str(name).strip().lower()
    present = available_devices()
    if name == "auto":
        return torch.device(present[1])
    base = name.split(":")[0]
    if base not in present:
        raise InputError(f"Device '{name}' is not available here; choose one of: {', '.join(present)}.")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"Device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``bf16``, and for ``auto`` on CUDA; None (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None
