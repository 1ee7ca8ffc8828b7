"""Samplers for per-pixel schedules, and the mean / variance / γ-map statistics.

All samplers walk a time grid ``1 = t_K > … > t_1 > t_0 = 0`` and read γ(t, y)
directly from the schedule (never an integrated β), so one model serves every
sampler. With ``α = sqrt(γ)``, ``σ = sqrt(1 − γ)``, each step from t to s < t is a
function of x_t and the data prediction

- ``x̂0 = (x_t − σ_t ε̂) / α_t``, clipped to ``[−clip, clip]`` (:class:`SamplingOptions`);
  samplers that need the noise use ``ε̃ = (x_t − α_t x̂0) / σ_t``, the noise that goes
  with the *clipped* x̂0 (ε̂ itself where nothing was clipped). So the DDIM family and
  DPM-Solver++ share their first-order steps wherever clipping acts: DDIM is first-order
  2M, the ancestral step first-order 2M SDE (docs/method.md, Sampling).

Each sampler is one small class with its update formula in its docstring
(:class:`Ancestral`, :class:`DDIM`, :class:`DPMSolver2M`, :class:`DPMSolver2MSDE`),
found by name in :data:`SAMPLER_TYPES`; :data:`SAMPLERS` are the ones offered to users
(benchmarks may register more with :func:`register_sampler`). The last step
(t_1 → 0) returns x̂0 at t_1 for every sampler.

Time grids (:data:`GRIDS`), shared by all pixels of an input:

- ``log_snr`` (default): ``t_K = 1``, then ``t_{K−1} … t_1`` uniform in the log-SNR
  ``ℓ(t) = log(γ/(1 − γ))`` of the reference pixel whose λ is the median of the
  λ map, over ``[ℓ_low, ℓ_high]`` (:attr:`SamplingOptions.log_snr_range`; by default
  ``ℓ(1)`` to ``LOG_SNR_MAX``, the points then spaced as if ``t_K`` were ``ℓ_low`` too),
  then ``t_0 = 0``: the final x̂0 is predicted from an almost clean x_{t_1}, and the
  solvers converge at their order to the exact flow. A model may narrow the range
  (its file's sampler defaults): where the signal is still buried (ℓ ≪ 0) or already
  resolved (large ℓ) a step changes little, so few-step sampling spends its steps between.
- ``uniform``: uniform in t. Its last interval ``[0, 1/K]`` is covered by one
  x̂0 prediction, a posterior *mean* at a noticeable noise level for K ≤ 50, so
  every solver is first order and the samples are shrunk (docs/method.md, Sampling).

Settings: :class:`SamplingOptions` is what is drawn (sampler, steps, η, clip, grid;
the package's sampling defaults live there and only there), :class:`RuntimeOptions`
how the denoiser runs (precision, memory layout, compiling), which changes the
samples only by rounding.

Noise: ``sample`` asks a :data:`NoiseSource` for the initial x₁ (stage 0) and
the fresh noise of stochastic step k (stage k); by default these are draws
from ``generator``. The tiled reconstruction passes noise keyed to global pixel
positions instead, through the same function.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from ..errors import Cancelled
from .cvdm import CVDM

GRIDS = ("log_snr", "uniform")
#: Time grid of calls and models that name none.
DEFAULT_GRID = "log_snr"
#: Sampler of calls and models that name none: right on the exact denoiser at 10–20 steps
#: and close to the paper's 200-step ancestral spread on trained networks (docs/method.md, Sampling).
DEFAULT_SAMPLER = "dpm_solver_2m_sde"
#: Network evaluations (NFE) of calls and models that name none.
DEFAULT_STEPS = 20
#: Bound of |x̂0| of calls and models that name none (the normalised data range).
DEFAULT_CLIP = 1.0

#: Below this log-SNR step a pixel's schedule is treated as flat (first-order update).
FLAT_STEP = 1e-4
#: Keeps x̂0 finite at t = 1 where α → 0.
MIN_ALPHA = 1e-8
#: γ can underflow to 0 for large λ; sampling needs ratios of γ, so it is floored.
MIN_GAMMA = 1e-20
#: γ can round to 1 in float32 near t = 0 (σ = 0, infinite log-SNR); it is capped just below.
MAX_GAMMA = 1 - 2**-23
#: Largest log-SNR ``log(γ/(1 − γ))`` of the ``log_snr`` grid (VDM's bound: noise std ≈ 1.3e-3).
LOG_SNR_MAX = 13.3
#: Largest end of the ``log_snr`` grid a user or model file may ask for (noise std ≈ 4.5e-5).
LOG_SNR_CEILING = 20.0
#: Bounds of the samples per image and the steps per sample: far beyond real use, small enough
#: never to exhaust memory or time on their own.
MAX_SAMPLES = 10_000
MAX_SAMPLER_STEPS = 100_000
#: Largest strength ζ of a data-consistency step (far beyond use: at ζ ≫ 1 a sample fits the input's noise).
MAX_CONSISTENCY_STRENGTH = 1e6

ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]
#: ``noise(stage)`` → standard normal ``(B, Cx, H, W)``; stage 0 is x₁, stage k the noise of step k.
NoiseSource = Callable[[int], torch.Tensor]
#: ``data_step(x̂0, γ_t)`` → x̂0 ``(B, Cx, H, W)``: a data-consistency step (:mod:`napari_cvdm.engine.data_step`).
DataStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SampleStatistics(NamedTuple):
    """Per-pixel statistics of N samples, each ``(B, C, H, W)``.

    ``variance`` is the unbiased sample variance (zeros when N = 1);
    ``gamma_map`` is γ(t = 0.5, y); ``samples`` is ``(B, N, C, H, W)`` or None.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    gamma_map: torch.Tensor
    samples: torch.Tensor | None


class RunningMoments:
    """Mean and unbiased variance of samples arriving in batches along ``dim``.

    Batches are merged in float64 with Chan et al.'s parallel update, so the result does not
    depend on how the samples were split; between batches the two moments are kept as
    ``dtype`` (float32 where many are held at once, as the engine's tiles are).
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float64):
        self.dim, self.dtype, self.count, self.mean, self.sum_sq_dev = dim, dtype, 0, None, None

    def add(self, draws: torch.Tensor) -> None:
        k = draws.shape[self.dim]
        draws = draws.double()
        mean = draws.mean(self.dim)
        sum_sq_dev = (draws - mean.unsqueeze(self.dim)).pow(2).sum(self.dim)
        if self.mean is not None:
            kept_mean = self.mean.double()
            delta = mean - kept_mean
            total = self.count + k
            mean = kept_mean + delta * (k / total)
            sum_sq_dev = self.sum_sq_dev.double() + sum_sq_dev + delta.pow(2) * (self.count * k / total)
        self.mean, self.sum_sq_dev = mean.to(self.dtype), sum_sq_dev.to(self.dtype)
        self.count += k

    def variance(self) -> torch.Tensor:
        """Unbiased variance (zeros for a single sample)."""
        if self.count > 1:
            return self.sum_sq_dev / (self.count - 1)
        return torch.zeros_like(self.sum_sq_dev)


# ----------------------------------------------------------------------------- update rules


def predict_data(x_t: torch.Tensor, eps_hat: torch.Tensor, gamma_t: torch.Tensor,
                 clip: float | None) -> torch.Tensor:
    """x̂0 = (x_t − σ_t ε̂) / α_t, clipped to ``[−clip, clip]`` unless ``clip`` is None."""
    x0_hat = (x_t - (1 - gamma_t).sqrt() * eps_hat) / gamma_t.sqrt().clamp_min(MIN_ALPHA)
    return x0_hat if clip is None else x0_hat.clamp(-clip, clip)


def noise_of_data(x_t: torch.Tensor, x0_hat: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
    """ε̃ = (x_t − α_t x̂0) / σ_t, the inverse of :func:`predict_data` (same α floor), for a clipped x̂0."""
    return (x_t - gamma_t.sqrt().clamp_min(MIN_ALPHA) * x0_hat) / (1 - gamma_t).sqrt()


def half_log_snr(gamma: torch.Tensor) -> torch.Tensor:
    """λ = ``log(α/σ)``, half the log-SNR (DPM-Solver's λ)."""
    return 0.5 * (torch.log(gamma) - torch.log1p(-gamma))


def divided_difference(newer: torch.Tensor, older: torch.Tensor, h_older: torch.Tensor,
                       h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(newer − older) h / h_older`` and where it is defined (``|h_older| ≥ FLAT_STEP``; 0 elsewhere)."""
    flat = h_older.abs() < FLAT_STEP
    return torch.where(flat, torch.zeros_like(h), (newer - older) * h / h_older.where(~flat, 1.0)), ~flat


class Sampler:
    """One reverse step t → s < t from x_t and the (clipped) data prediction x̂0, per pixel.

    A subclass sets ``name``, ``default_eta`` (η when the options give none) and
    ``uses_eta`` (False: deterministic, η = 0 whatever is asked) and implements
    :meth:`step`. A multistep sampler keeps its history on the instance: one instance per
    chain (:meth:`SamplingOptions.make_sampler`).
    """

    name: ClassVar[str]
    title: ClassVar[str]  # for tables and reports
    default_eta: ClassVar[float] = 0.0
    uses_eta: ClassVar[bool] = True

    def __init__(self, eta: float = 0.0):
        self.eta = float(eta) if self.uses_eta else 0.0

    @property
    def needs_noise(self) -> bool:
        """Whether :meth:`step` takes fresh standard normal noise (η > 0)."""
        return self.eta > 0

    def step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, gamma_t: torch.Tensor, gamma_s: torch.Tensor,
             noise: torch.Tensor | None) -> torch.Tensor:
        """x_s from x_t ``(B, C, H, W)``, x̂0, γ_t, γ_s (same shape) and ξ (None unless :attr:`needs_noise`)."""
        raise NotImplementedError


class DDIM(Sampler):
    """DDIM (η = 0 by default: the deterministic ODE sampler; first-order :class:`DPMSolver2M`).

    ``c² = η² (σ_s²/σ_t²)(1 − α_t²/α_s²)``, ``x_s = α_s x̂0 + sqrt(σ_s² − c²) ε̃ + c ξ``.
    """

    name = "ddim"
    title = "DDIM"

    def step(self, x_t, x0_hat, gamma_t, gamma_s, noise):
        eps = noise_of_data(x_t, x0_hat, gamma_t)
        sigma2_t, sigma2_s = 1 - gamma_t, 1 - gamma_s
        c2 = self.eta**2 * (sigma2_s / sigma2_t.clamp_min(1e-12)) * (1 - gamma_t / gamma_s)
        c2 = c2.clamp(min=0.0).minimum(sigma2_s)
        x_s = gamma_s.sqrt() * x0_hat + (sigma2_s - c2).sqrt() * eps
        return x_s + c2.sqrt() * noise if self.needs_noise else x_s


class Ancestral(DDIM):
    """The paper's (VDM) ancestral sampler: :class:`DDIM` at η = 1.

    ``x_s = α_s x̂0 + σ_s sqrt(1 − c) ε̃ + σ_s sqrt(c) ξ`` with ``c = 1 − SNR_t/SNR_s``: the
    DDPM posterior mean given x̂0 plus its noise, exactly first-order :class:`DPMSolver2MSDE`.
    """

    name = "ancestral"
    title = "ancestral (VDM)"
    default_eta = 1.0


class DPMSolver2M(Sampler):
    """DPM-Solver++ 2M (data prediction, multistep; deterministic), per pixel.

    ``h = λ_s − λ_t``, ``D = x̂0 + (h / 2h_prev)(x̂0 − x̂0_prev)``,
    ``x_s = (σ_s/σ_t) x_t − α_s expm1(−h) D``. First order (``D = x̂0``) on the first step
    and wherever the previous step was flat (``|h_prev| < FLAT_STEP``: h/h_prev would be
    0/0 there, and a flat pixel needs no correction). State: ``history``, the last
    ``memory`` pairs (x̂0, h of the step taken from it), newest first.
    """

    name = "dpm_solver_2m"
    title = "DPM-Solver++ 2M"
    uses_eta = False
    memory: ClassVar[int] = 1

    def __init__(self, eta: float = 0.0):
        super().__init__(eta)
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(self, x_t, x0_hat, gamma_t, gamma_s, noise):
        h = half_log_snr(gamma_s) - half_log_snr(gamma_t)
        x_s = self.update(x_t, x0_hat, gamma_t, gamma_s, h, noise)
        self.history = [(x0_hat, h), *self.history][:self.memory]
        return x_s

    def data_term(self, x0_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """D: x̂0 plus the second-order correction where the previous step allows it."""
        if not self.history:
            return x0_hat
        x0_prev, h_prev = self.history[0]
        return x0_hat + 0.5 * divided_difference(x0_hat, x0_prev, h_prev, h)[0]

    def update(self, x_t, x0_hat, gamma_t, gamma_s, h, noise) -> torch.Tensor:
        """x_s given this step's ``h`` (before the history moves on)."""
        sigma_ratio = ((1 - gamma_s) / (1 - gamma_t)).sqrt()
        return sigma_ratio * x_t - gamma_s.sqrt() * torch.expm1(-h) * self.data_term(x0_hat, h)


class DPMSolver2MSDE(DPMSolver2M):
    """DPM-Solver++ 2M SDE (k-diffusion's ``dpmpp_2m_sde``; η = 1 by default; η = 0 is 2M).

    With the ``D`` of :class:`DPMSolver2M`:
    ``x_s = (σ_s/σ_t) e^{−ηh} x_t − α_s expm1(−(1+η)h) D + σ_s sqrt(−expm1(−2ηh)) ξ``;
    at η = 1 its first-order form is exactly the :class:`Ancestral` step.
    """

    name = "dpm_solver_2m_sde"
    title = "DPM-Solver++ 2M SDE"
    default_eta = 1.0
    uses_eta = True

    def update(self, x_t, x0_hat, gamma_t, gamma_s, h, noise):
        if not self.needs_noise:
            return super().update(x_t, x0_hat, gamma_t, gamma_s, h, noise)
        eta, data = self.eta, self.data_term(x0_hat, h)
        sigma_ratio = ((1 - gamma_s) / (1 - gamma_t)).sqrt()
        x_s = sigma_ratio * torch.exp(-eta * h) * x_t - gamma_s.sqrt() * torch.expm1(-(1 + eta) * h) * data
        return x_s + (1 - gamma_s).sqrt() * (-torch.expm1(-2 * eta * h)).clamp_min(0).sqrt() * noise


#: Every sampler :class:`SamplingOptions` accepts, by name (benchmarks may add more).
SAMPLER_TYPES: dict[str, type[Sampler]] = {kind.name: kind for kind in (Ancestral, DDIM, DPMSolver2M, DPMSolver2MSDE)}
#: The samplers offered to users.
SAMPLERS = tuple(SAMPLER_TYPES)


def register_sampler(kind: type[Sampler]) -> type[Sampler]:
    """Make ``kind`` available to :class:`SamplingOptions` under ``kind.name`` (not to users)."""
    SAMPLER_TYPES[kind.name] = kind
    return kind


# ----------------------------------------------------------------------------- settings


def _number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a float, ValueError naming ``name`` unless a finite number in the range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{low:g}, {high:g}] (got {value!r})")
    return float(value)


@dataclass(frozen=True)
class SamplingOptions:
    """What :func:`sample` draws; the package's sampling defaults are these field defaults.

    ``sampler``: a name in :data:`SAMPLER_TYPES`; ``steps``: network evaluations (NFE), ≥ 1;
    ``eta``: η in [0, 1] of the samplers that have one (None: the sampler's default; after
    construction always the η used, 0 for a deterministic sampler); ``clip``: bound of
    |x̂0| (None: unclipped); ``grid``: one of :data:`GRIDS`; ``log_snr_range``: ``(ℓ_low, ℓ_high)``
    of the ``log_snr`` grid (ℓ_low None: the reference pixel's ℓ(1)). Bad values raise
    ValueError naming the field.
    """

    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    eta: float | None = None
    clip: float | None = DEFAULT_CLIP
    grid: str = DEFAULT_GRID
    log_snr_range: tuple[float | None, float] = (None, LOG_SNR_MAX)

    def __post_init__(self):
        if self.sampler not in SAMPLER_TYPES:
            raise ValueError(f"sampler must be one of {tuple(SAMPLER_TYPES)} (got {self.sampler!r})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer) or self.steps < 1:
            raise ValueError(f"steps must be a whole number ≥ 1 (got {self.steps!r})")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS} (got {self.grid!r})")
        kind = SAMPLER_TYPES[self.sampler]
        eta = kind.default_eta if self.eta is None else _number("eta", self.eta, 0.0, 1.0)
        object.__setattr__(self, "eta", eta if kind.uses_eta else 0.0)
        object.__setattr__(self, "steps", int(self.steps))
        if self.clip is not None:
            object.__setattr__(self, "clip", _number("clip", self.clip, 0.0, math.inf, low_open=True))
        object.__setattr__(self, "log_snr_range", _log_snr_range(self.log_snr_range))

    @classmethod
    def resolve(cls, model_defaults: Mapping | None = None, *, sampler: str | None = None,
                steps: int | None = None, eta: float | None = None, grid: str | None = None) -> SamplingOptions:
        """The given settings (None: not given), else the model's (``ModelInfo.sampler``: name, steps,
        eta, clip, grid, log_snr_range), else the defaults above. ``clip`` and ``log_snr_range``
        come from the model only."""
        defaults = dict(model_defaults or {})
        given = {"sampler": sampler, "steps": steps, "eta": eta, "grid": grid}
        values = {field: value if value is not None else defaults.get("name" if field == "sampler" else field)
                  for field, value in given.items()}
        if "clip" in defaults:
            values["clip"] = defaults["clip"]
        if defaults.get("log_snr_range") is not None:
            values["log_snr_range"] = tuple(defaults["log_snr_range"])
        return cls(**{field: value for field, value in values.items() if value is not None or field == "clip"})

    def make_sampler(self) -> Sampler:
        """A fresh sampler (with empty history) for one chain."""
        return SAMPLER_TYPES[self.sampler](self.eta)


def _log_snr_range(value) -> tuple[float | None, float]:
    """``(ℓ_low or None, ℓ_high)`` with ℓ_low < ℓ_high ≤ LOG_SNR_CEILING, else ValueError naming ``log_snr_range``."""
    try:
        low, high = value
        high = _number("log_snr_range's ℓ_high", high, -math.inf, LOG_SNR_CEILING)
        low = None if low is None else _number("log_snr_range's ℓ_low", low, -math.inf, high)
    except (TypeError, ValueError) as error:
        raise ValueError(f"log_snr_range must be (ℓ_low or None, ℓ_high), ℓ_low < ℓ_high ≤ {LOG_SNR_CEILING:g} "
                         f"(got {value!r}): {error}") from None
    if low is not None and low >= high:
        raise ValueError(f"log_snr_range must have ℓ_low < ℓ_high (got {value!r})")
    return low, high


@dataclass(frozen=True)
class RuntimeOptions:
    """How the denoiser runs; any choice changes the samples only by rounding.

    ``autocast_dtype``: None (float32) or a reduced precision such as ``torch.bfloat16`` for
    the denoiser (the schedule and the updates stay float32); ``channels_last``: NHWC tensors
    into the denoiser; ``compile``: run it through ``torch.compile`` (cached per model; the
    first call is slow; falls back to eager with a warning).
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.autocast_dtype is not None and not (isinstance(self.autocast_dtype, torch.dtype)
                                                    and self.autocast_dtype.is_floating_point):
            raise ValueError(f"autocast_dtype must be None or a floating torch.dtype (got {self.autocast_dtype!r})")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False (got {getattr(self, name)!r})")


# ----------------------------------------------------------------------------- time grids


def time_grid(steps: int, device: torch.device | str = "cpu", *, kind: str = "uniform",
              schedule=None, lam: float | None = None,
              log_snr_range: tuple[float | None, float] = (None, LOG_SNR_MAX)) -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0 (float32 on ``device``).

    ``kind="uniform"``: uniform in t. ``kind="log_snr"``: ``t_K = 1``, ``t_{K−1} … t_1``
    uniform in the log-SNR of a pixel with λ = ``lam`` under ``schedule`` (a :class:`Schedule`)
    on the points of ``linspace(ℓ_low, ℓ_high, K)`` after the first (ℓ_low None or below ℓ(1):
    ℓ(1); ℓ_high at most ℓ(0)), and ``t_0 = 0``; falls back to uniform when that pixel's
    schedule does not span a log-SNR interval (e.g. λ ≈ 0).
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; expected one of {GRIDS}")
    uniform = torch.linspace(1.0, 0.0, steps + 1, device=device)
    if kind == "uniform" or steps == 1:
        return uniform
    if schedule is None or lam is None:
        raise ValueError("the log_snr grid needs the schedule and a reference λ")
    log_snr = _log_snr_table(schedule, float(lam))
    wanted_low, wanted_high = log_snr_range
    low = log_snr[-1] if wanted_low is None else max(log_snr[-1], wanted_low)
    high = min(wanted_high, log_snr[0])
    if not np.all(np.isfinite([low, high])) or high - low < 1e-3:
        return uniform
    targets = np.linspace(low, high, steps)  # t_K = 1 … t_1
    times = np.interp(targets, log_snr[::-1], _TABLE_T[::-1])
    times[0] = 1.0
    times = np.minimum.accumulate(times)  # non-increasing despite interpolation rounding
    return torch.tensor(np.append(times, 0.0), dtype=torch.float32, device=device)


#: Dense geometric table of t for inverting the log-SNR (which diverges at t = 0).
_TABLE_T = np.geomspace(1e-9, 1.0, 4096)


def _log_snr_table(schedule, lam: float) -> np.ndarray:
    """Full log-SNR ``log(γ/(1 − γ))`` at ``_TABLE_T`` for a pixel with λ = ``lam`` (float64, decreasing).

    τ̃ is evaluated in the time network's own precision: it has no cancellation near t = 0
    (:class:`~napari_cvdm.model.schedule.MonotoneTime`), so 1 − γ ≈ λτ̃ keeps its relative accuracy.
    """
    parameter = next(schedule.time.parameters(), None)
    like = {} if parameter is None else {"dtype": parameter.dtype, "device": parameter.device}
    with torch.no_grad():
        times = torch.as_tensor(_TABLE_T, **({"dtype": torch.float32} | like))
        tau_tilde = schedule.time(times).tau_tilde.double().cpu().numpy()
    log_gamma = np.minimum(-lam * tau_tilde, -1e-300)
    return log_gamma - np.log(-np.expm1(log_gamma))


def _row_grids(steps: int, grid: str, schedule, schedule_map: torch.Tensor,
               lam_ref: float | torch.Tensor | None,
               log_snr_range: tuple[float | None, float] = (None, LOG_SNR_MAX)) -> torch.Tensor:
    """Time grid ``(steps + 1,)`` or, for ``log_snr``, one per row ``(B, steps + 1)``."""
    device = schedule_map.device
    if grid != "log_snr":
        return time_grid(steps, device, kind=grid)
    if lam_ref is None:
        lam_ref = schedule_map.flatten(1).float().median(1).values
    refs = torch.as_tensor(lam_ref, dtype=torch.float32).flatten().cpu()
    grid_of = lambda value: time_grid(steps, device, kind=grid, schedule=schedule, lam=value,  # noqa: E731
                                      log_snr_range=log_snr_range)
    if refs.numel() == 1:
        return grid_of(float(refs))
    grids = {value: grid_of(value) for value in set(refs.tolist())}
    return torch.stack([grids[value] for value in refs.tolist()])


# ----------------------------------------------------------------------------- network evaluation

# torch.compile'd noise predictors, one per model; a failed compile is remembered as eager.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _noise_predictor(model: CVDM, runtime: RuntimeOptions
                     ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``ε̂(x_t, y, γ_t)`` in float32, run under autocast / channels_last / torch.compile as asked.

    ``compile``: the first call compiles (seconds to a minute); if compiling or running the
    compiled graph fails, a ``RuntimeWarning`` is given and the model runs eagerly from then on.
    """
    eager = model.predict_noise
    autocast_dtype, channels_last = runtime.autocast_dtype, runtime.channels_last

    def call(function, x, y, gamma):
        if channels_last:
            x, y, gamma = (v.contiguous(memory_format=torch.channels_last) for v in (x, y, gamma))
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            return function(x, y, gamma).float().contiguous()

    if not runtime.compile:
        return lambda x, y, gamma: call(eager, x, y, gamma)

    def compiled_call(x, y, gamma):
        function = _COMPILED.get(model)
        if function is None:
            try:
                function = torch.compile(eager)
            except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
                function = _compile_failed(model, error)
            _COMPILED[model] = function
        if function is eager:
            return call(eager, x, y, gamma)
        try:
            return call(function, x, y, gamma)
        except Exception as error:  # noqa: BLE001
            _COMPILED[model] = _compile_failed(model, error)
            return call(eager, x, y, gamma)

    return compiled_call


def _compile_failed(model: CVDM, error: Exception):
    warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                  "running the model without compiling.", RuntimeWarning, stacklevel=3)
    return model.predict_noise


# ----------------------------------------------------------------------------- sampling


def _gamma(model: CVDM, t: torch.Tensor, schedule_map: torch.Tensor) -> torch.Tensor:
    """γ(t, y) kept inside ``[MIN_GAMMA, MAX_GAMMA]`` so σ, α and the log-SNR stay finite."""
    return model.schedule.gamma(t, schedule_map).clamp(MIN_GAMMA, MAX_GAMMA)


@torch.no_grad()
def sample(
    model: CVDM,
    y: torch.Tensor,
    options: SamplingOptions,
    runtime: RuntimeOptions = RuntimeOptions(),
    *,
    schedule_map: torch.Tensor | None = None,
    lam_ref: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    data_step: DataStep | None = None,
) -> torch.Tensor:
    """Draw one sample of x0 per row of ``y`` ``(B, Cy, H, W)``; returns float32 ``(B, Cx, H, W)``.

    ``schedule_map``: λ(y) if the caller already has it. ``lam_ref``: the reference λ of
    the ``log_snr`` grid, a float or one per row ``(B,)`` (default: each row's median of
    ``schedule_map``). ``noise`` supplies x₁ and the step noise (default: ``torch.randn``
    from ``generator``, x₁ first, then one draw per stochastic step). ``progress(i, steps)``
    follows every network evaluation; ``should_stop`` is polled before each and raises
    :class:`~napari_cvdm.errors.Cancelled`. ``data_step(x̂0, γ_t)`` replaces every (clipped) x̂0
    before the update (a data-consistency step; None: x̂0 as predicted).
    """
    if schedule_map is None:
        schedule_map = model.schedule.schedule_map(y)
    steps = options.steps
    times = _row_grids(steps, options.grid, model.schedule, schedule_map, lam_ref, options.log_snr_range)
    if noise is None:
        shape = (y.shape[0], model.config.x_channels, *y.shape[-2:])
        noise = lambda stage: torch.randn(shape, generator=generator, device=y.device)  # noqa: E731
    predict_noise = _noise_predictor(model, runtime)
    sampler = options.make_sampler()
    x = noise(0).to(y.device, torch.float32)
    gamma_s = _gamma(model, times[..., 0], schedule_map)
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled("Sampling was stopped.")
        gamma_t = gamma_s
        x0_hat = predict_data(x, predict_noise(x, y, gamma_t), gamma_t, options.clip)
        if data_step is not None:
            x0_hat = data_step(x0_hat, gamma_t)
        if i == steps - 1:
            x = x0_hat  # t_0 = 0: the sample is the data prediction
        else:
            gamma_s = _gamma(model, times[..., i + 1], schedule_map)
            fresh = noise(i + 1).to(y.device, torch.float32) if sampler.needs_noise else None
            x = sampler.step(x, x0_hat, gamma_t, gamma_s, fresh)
        if progress is not None:
            progress(i + 1, steps)
    return x


@torch.no_grad()
def sample_statistics(
    model: CVDM,
    y: torch.Tensor,
    n_samples: int,
    options: SamplingOptions,
    runtime: RuntimeOptions = RuntimeOptions(),
    *,
    max_batch: int | None = None,
    keep_samples: bool = False,
    generator: torch.Generator | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> SampleStatistics:
    """Mean, unbiased variance and γ(0.5, c) of ``n_samples`` samples per input.

    ``y``: the model's input ``(B, Cy, H, W)``; the statistics are of ``b + s r̂`` for a
    residual model (:meth:`CVDM.condition`), in normalised target units. λ(c) is computed
    once; the N samples of each input are drawn together as one batch (at most
    ``max_batch`` rows at a time, merged with Chan's parallel variance update). Other
    arguments as in :func:`sample` (the ``log_snr`` grid follows each input's own λ map).
    """
    if n_samples < 1:
        raise ValueError("n_samples must be at least 1")
    batch = y.shape[0]
    chunk = n_samples if max_batch is None else max(1, min(n_samples, max_batch // max(batch, 1)))
    y, base = model.condition(y)
    schedule_map = model.schedule.schedule_map(y)
    n_chunks = -(-n_samples // chunk)
    moments, kept = RunningMoments(dim=1), []
    for c in range(n_chunks):
        k = min(chunk, n_samples - moments.count)
        chunk_progress = None
        if progress is not None:
            chunk_progress = lambda i, total, c=c: progress(c * total + i, n_chunks * total)  # noqa: E731
        draws = sample(model, y.repeat_interleave(k, 0), options, runtime,
                       schedule_map=schedule_map.repeat_interleave(k, 0), generator=generator,
                       progress=chunk_progress, should_stop=should_stop).reshape(batch, k, *schedule_map.shape[1:])
        draws = model.to_output(draws, None if base is None else base[:, None].float())
        moments.add(draws)
        if keep_samples:
            kept.append(draws)
    return SampleStatistics(
        moments.mean.float(),
        moments.variance().float(),
        model.schedule.gamma(0.5, schedule_map),
        torch.cat(kept, 1) if keep_samples else None,
    )
