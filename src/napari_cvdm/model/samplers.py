"""Samplers for per-pixel schedules, and the mean / variance / γ-map statistics.

All samplers walk a time grid ``1 = t_K > … > t_1 > t_0 = 0`` and read γ(t, y)
directly from the schedule (never an integrated β), so one model serves every
sampler. With ``α = sqrt(γ)``, ``σ = sqrt(1 − γ)``, one step from t to s < t:

- ``x̂0 = (x_t − σ_t ε̂) / α_t``, optionally clipped to the data range.
- DDIM family: ``c² = η² (σ_s²/σ_t²)(1 − α_t²/α_s²)``,
  ``x_s = α_s x̂0 + sqrt(σ_s² − c²) ε̃ + c ξ``. ``η = 1`` is the paper's
  (VDM) ancestral sampler, ``η = 0`` the deterministic ODE sampler.
  ``ε̃ = (x_t − α_t x̂0) / σ_t`` is the noise that goes with the *clipped* x̂0
  (ε̂ itself where nothing was clipped), so every step is a function of x_t and
  x̂0 alone: the ancestral step is the DDPM posterior mean given the clipped x̂0
  plus its noise, exactly the first-order step of 2M SDE, and DDIM the first-order
  step of 2M, wherever clipping acts too. Mixing the unclipped ε̂ with the clipped
  x̂0 instead pulls clipped pixels back harder at every step: on QPI a long chain of
  such steps had half the spread of the 20-step 2M SDE (docs/benchmarks.md).
- DPM-Solver++ 2M (data prediction, multistep), per pixel:
  ``λ_t = log(α_t/σ_t)``, ``h = λ_s − λ_t``,
  ``x_s = (σ_s/σ_t) x_t − α_s expm1(−h) D`` with ``D = x̂0 + (h / 2h_prev)(x̂0 − x̂0_prev)``.
  First order on the first step and wherever a pixel's schedule is nearly flat
  between the previous two grid times (``|h_prev| < FLAT_STEP``: the ratio
  ``h/h_prev`` would be 0/0 there, and a flat pixel needs no correction).
- DPM-Solver++ 2M SDE (``dpm_solver_2m_sde``, η = 1): the same ``D``,
  ``x_s = (σ_s/σ_t) e^{−ηh} x_t − α_s expm1(−(1+η)h) D + σ_s sqrt(−expm1(−2ηh)) ξ``;
  its first-order form is exactly the ancestral step. 3M (``dpm_solver_3m``) is
  kept for benchmarks only (:data:`EXPERIMENTAL_SAMPLERS`).

The last step (t_1 → 0) returns x̂0 at t_1 for every sampler.

Time grids (:data:`GRIDS`), shared by all pixels of an input:

- ``log_snr`` (default): the K points ``t_K … t_1`` uniform in the log-SNR
  ``ℓ(t) = log(γ/(1 − γ))`` of the reference pixel whose λ is the median of the
  λ map, from ``ℓ(1)`` up to ``LOG_SNR_MAX``, then ``t_0 = 0``: the final x̂0 is
  predicted from an almost clean x_{t_1}, and DDIM / 2M / 3M converge at orders
  1 / 2 / 3 to the exact flow.
- ``uniform``: uniform in t. Its last interval ``[0, 1/K]`` is covered by one
  x̂0 prediction, a posterior *mean* at a noticeable noise level for K ≤ 50, so
  every solver is first order and the samples are shrunk (an exact denoiser gives
  0.56–0.79 of the true variance at 10–20 steps; docs/benchmarks.md).

Noise: ``sample`` asks a :data:`NoiseSource` for the initial x₁ (stage 0) and
the fresh noise of stochastic step k (stage k); by default these are draws
from ``generator``. The tiled reconstruction passes noise keyed to global pixel
positions instead, through the same function.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..errors import Cancelled
from .cvdm import CVDM

SAMPLERS = ("ancestral", "ddim", "dpm_solver_2m", "dpm_solver_2m_sde")
#: Accepted by :func:`sample` for benchmarks, not offered to users: DPM-Solver++ 3M did not
#: measure better than 2M at the default NFE (docs/benchmarks.md).
EXPERIMENTAL_SAMPLERS = ("dpm_solver_3m",)
#: Samplers whose η defaults to 1 (stochastic); ``ddim`` defaults to η = 0.
STOCHASTIC = ("ancestral", "dpm_solver_2m_sde")
#: Samplers that are always deterministic (η is ignored).
DETERMINISTIC = ("dpm_solver_2m", "dpm_solver_3m")
GRIDS = ("log_snr", "uniform")
#: Time grid of models whose ModelInfo.sampler names none.
DEFAULT_GRID = "log_snr"
#: Sampler of calls and models that name none: right on the exact denoiser at 10–20 steps
#: and close to the paper's 200-step ancestral spread on trained networks
#: (docs/benchmarks.md), where the deterministic solvers are not.
DEFAULT_SAMPLER = "dpm_solver_2m_sde"

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

ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]
#: ``noise(stage)`` → standard normal ``(B, Cx, H, W)``; stage 0 is x₁, stage k the noise of step k.
NoiseSource = Callable[[int], torch.Tensor]


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
    """Mean and unbiased variance of samples arriving in batches along ``dim`` (float64).

    Batches are merged with Chan et al.'s parallel update, so the result does not
    depend on how the samples were split.
    """

    def __init__(self, dim: int):
        self.dim, self.count, self.mean, self.sum_sq_dev = dim, 0, None, None

    def add(self, draws: torch.Tensor) -> None:
        k = draws.shape[self.dim]
        draws = draws.double()
        mean = draws.mean(self.dim)
        sum_sq_dev = (draws - mean.unsqueeze(self.dim)).pow(2).sum(self.dim)
        if self.mean is None:
            self.mean, self.sum_sq_dev = mean, sum_sq_dev
        else:
            delta = mean - self.mean
            total = self.count + k
            self.mean = self.mean + delta * (k / total)
            self.sum_sq_dev = self.sum_sq_dev + sum_sq_dev + delta.pow(2) * (self.count * k / total)
        self.count += k

    def variance(self) -> torch.Tensor:
        """Unbiased variance (zeros for a single sample)."""
        if self.count > 1:
            return self.sum_sq_dev / (self.count - 1)
        return torch.zeros_like(self.sum_sq_dev)


# ----------------------------------------------------------------------------- time grids


def time_grid(steps: int, device: torch.device | str = "cpu", *, kind: str = "uniform",
              schedule=None, lam: float | None = None) -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0 (float32 on ``device``).

    ``kind="uniform"``: uniform in t. ``kind="log_snr"``: ``t_K … t_1`` uniform in the
    log-SNR of a pixel with λ = ``lam`` under ``schedule`` (a :class:`Schedule`),
    from ℓ(1) to ``LOG_SNR_MAX``, and ``t_0 = 0``; falls back to uniform when that
    pixel's schedule does not span a log-SNR interval (e.g. λ ≈ 0).
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
    low, high = log_snr[-1], min(LOG_SNR_MAX, log_snr[0])
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
    """Full log-SNR ``log(γ/(1 − γ))`` at ``_TABLE_T`` for a pixel with λ = ``lam`` (float64, decreasing)."""
    import copy

    time = copy.deepcopy(schedule.time).to(torch.float64)  # τ̃(t) = f(t) − f(0) cancels in float32
    with torch.no_grad():
        tau_tilde = time(torch.from_numpy(_TABLE_T)).tau_tilde.cpu().numpy()
    log_gamma = np.minimum(-lam * tau_tilde, -1e-300)
    return log_gamma - np.log(-np.expm1(log_gamma))


def _row_grids(steps: int, grid: str, schedule, schedule_map: torch.Tensor,
               lam_ref: float | torch.Tensor | None) -> torch.Tensor:
    """Time grid ``(steps + 1,)`` or, for ``log_snr``, one per row ``(B, steps + 1)``."""
    device = schedule_map.device
    if grid != "log_snr":
        return time_grid(steps, device, kind=grid)
    if lam_ref is None:
        lam_ref = schedule_map.flatten(1).float().median(1).values
    refs = torch.as_tensor(lam_ref, dtype=torch.float32).flatten().cpu()
    if refs.numel() == 1:
        return time_grid(steps, device, kind=grid, schedule=schedule, lam=float(refs))
    grids = {value: time_grid(steps, device, kind=grid, schedule=schedule, lam=value)
             for value in set(refs.tolist())}
    return torch.stack([grids[value] for value in refs.tolist()])


# ----------------------------------------------------------------------------- update rules


def predict_data(x_t: torch.Tensor, eps_hat: torch.Tensor, gamma_t: torch.Tensor,
                 clip: float | None) -> torch.Tensor:
    """x̂0 = (x_t − σ_t ε̂) / α_t, clipped to ``[−clip, clip]`` unless ``clip`` is None."""
    x0_hat = (x_t - (1 - gamma_t).sqrt() * eps_hat) / gamma_t.sqrt().clamp_min(MIN_ALPHA)
    return x0_hat if clip is None else x0_hat.clamp(-clip, clip)


def noise_of_data(x_t: torch.Tensor, x0_hat: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
    """ε̃ = (x_t − α_t x̂0) / σ_t, the inverse of :func:`predict_data` (same α floor), for a clipped x̂0."""
    return (x_t - gamma_t.sqrt().clamp_min(MIN_ALPHA) * x0_hat) / (1 - gamma_t).sqrt()


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, gamma_t: torch.Tensor,
              gamma_s: torch.Tensor, eta: float, noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM-family step t → s (η = 1 ancestral, η = 0 deterministic) from x_t and the (clipped) x̂0."""
    eps_hat = noise_of_data(x_t, x0_hat, gamma_t)
    sigma2_t, sigma2_s = 1 - gamma_t, 1 - gamma_s
    c2 = eta**2 * (sigma2_s / sigma2_t.clamp_min(1e-12)) * (1 - gamma_t / gamma_s)
    c2 = c2.clamp(min=0.0).minimum(sigma2_s)
    x_s = gamma_s.sqrt() * x0_hat + (sigma2_s - c2).sqrt() * eps_hat
    if eta > 0:
        x_s = x_s + c2.sqrt() * noise
    return x_s


def _log_snr(gamma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR ``log(α/σ)``."""
    return 0.5 * (torch.log(gamma) - torch.log1p(-gamma))


def dpm_solver_step(x_t: torch.Tensor, x0_hat: torch.Tensor,
                    history: list[tuple[torch.Tensor, torch.Tensor]],
                    gamma_t: torch.Tensor, gamma_s: torch.Tensor, eta: float = 0.0,
                    noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One multistep DPM-Solver++ step t → s of order ``len(history) + 1`` (1 to 3), per pixel.

    ``history``: ``(x̂0, h)`` of the previous evaluations, newest first, where ``h`` is the
    log-SNR step that led to that evaluation's time (so ``history[0][1]`` is
    ``h_prev``). Returns ``x_s`` and this step's ``h = λ_s − λ_t``. A pixel whose
    previous step is flat (``|h_prev| < FLAT_STEP``) drops one order per flat step.

    ODE (``eta = 0``), with ``r0 = h0/h``, ``r1 = h1/h`` (diffusers' notation):
    ``D1_0 = (x̂0 − x̂0₁)/r0``, 2M: ``D = x̂0 + D1_0/2``;
    3M: ``D1_1 = (x̂0₁ − x̂0₂)/r1``, ``D1 = D1_0 + r0/(r0+r1)(D1_0 − D1_1)``,
    ``D2 = (D1_0 − D1_1)/(r0+r1)``,
    ``x_s = (σ_s/σ_t) x_t − α_s φ1 x̂0 + α_s φ2 D1 − α_s φ3 D2`` with
    ``φ1 = expm1(−h)``, ``φ2 = φ1/h + 1``, ``φ3 = (φ1 + h)/h² − 1/2``.

    SDE (``eta > 0``, order ≤ 2, k-diffusion's ``dpmpp_2m_sde``): with ``ĥ = (1 + η) h``,
    ``x_s = (σ_s/σ_t) e^{−ηh} x_t − α_s expm1(−ĥ) D + σ_s sqrt(−expm1(−2ηh)) ξ``;
    at η = 1 and first order this is exactly the ancestral (DDPM posterior) step.
    """
    step = _log_snr(gamma_s) - _log_snr(gamma_t)
    sigma_ratio = ((1 - gamma_s) / (1 - gamma_t)).sqrt()
    alpha_s = gamma_s.sqrt()

    def divided_difference(newer, older, h_older):
        flat = h_older.abs() < FLAT_STEP
        return torch.where(flat, torch.zeros_like(step), (newer - older) * step / h_older.where(~flat, 1.0)), ~flat

    d1_0 = None
    if history:
        d1_0, ok0 = divided_difference(x0_hat, history[0][0], history[0][1])
    if eta > 0:
        data = x0_hat if d1_0 is None else x0_hat + 0.5 * d1_0
        x_s = sigma_ratio * torch.exp(-eta * step) * x_t - alpha_s * torch.expm1(-(1 + eta) * step) * data
        return x_s + (1 - gamma_s).sqrt() * (-torch.expm1(-2 * eta * step)).clamp_min(0).sqrt() * noise, step
    phi1 = torch.expm1(-step)
    if d1_0 is None:
        return sigma_ratio * x_t - alpha_s * phi1 * x0_hat, step
    second_order = sigma_ratio * x_t - alpha_s * phi1 * (x0_hat + 0.5 * d1_0)
    if len(history) < 2:
        return second_order, step
    (x0_prev, h0), (x0_prev2, h1) = history[:2]
    d1_1, ok1 = divided_difference(x0_prev, x0_prev2, h1)
    third = ok0 & ok1 & (step.abs() >= FLAT_STEP)
    safe_step = step.where(third, 1.0)
    r0, r1 = h0 / safe_step, h1 / safe_step
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / safe_step + 1
    phi3 = (phi1 + safe_step) / safe_step**2 - 0.5
    third_order = sigma_ratio * x_t - alpha_s * phi1 * x0_hat + alpha_s * phi2 * d1 - alpha_s * phi3 * d2
    return torch.where(third, third_order, second_order), step


# ----------------------------------------------------------------------------- network evaluation

# torch.compile'd noise predictors, one per model; a failed compile is remembered as eager.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _noise_predictor(model: CVDM, *, autocast_dtype: torch.dtype | None, channels_last: bool,
                     compile: bool) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``ε̂(x_t, y, γ_t)`` in float32, run under autocast / channels_last / torch.compile as asked.

    ``compile``: the first call compiles (seconds to a minute); if compiling or running the
    compiled graph fails, a ``RuntimeWarning`` is given and the model runs eagerly from then on.
    """
    eager = model.predict_noise

    def call(function, x, y, gamma):
        if channels_last:
            x, y, gamma = (v.contiguous(memory_format=torch.channels_last) for v in (x, y, gamma))
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            return function(x, y, gamma).float().contiguous()

    if not compile:
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
    *,
    steps: int,
    sampler: str = DEFAULT_SAMPLER,
    eta: float | None = None,
    clip: float | None = 1.0,
    grid: str = DEFAULT_GRID,
    schedule_map: torch.Tensor | None = None,
    lam_ref: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Draw one sample of x0 per row of ``y`` ``(B, Cy, H, W)``; returns float32 ``(B, Cx, H, W)``.

    ``sampler``: one of :data:`SAMPLERS`; ``eta`` overrides the η of the DDIM family
    (``ancestral`` is DDIM with η = 1) and of ``dpm_solver_2m_sde``; ``dpm_solver_2m``/``3m``
    are deterministic. ``steps`` = network evaluations (NFE).
    ``grid``: one of :data:`GRIDS`; ``lam_ref`` the reference λ of the ``log_snr``
    grid, a float or one per row ``(B,)`` (default: each row's median of
    ``schedule_map``). ``schedule_map`` is λ(y) if the caller already has it.
    ``noise`` supplies x₁ and the ancestral noise (default: ``torch.randn`` from
    ``generator``, x₁ first, then one draw per stochastic step). ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs the denoiser in reduced precision; the schedule
    and update arithmetic stays in float32. ``channels_last`` feeds the denoiser
    NHWC tensors; ``compile`` runs it through ``torch.compile`` (cached per model;
    falls back to eager with a warning). ``should_stop`` is polled before every
    network evaluation and raises :class:`~napari_cvdm.errors.Cancelled`.
    """
    if sampler not in SAMPLERS + EXPERIMENTAL_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler in DETERMINISTIC:
        eta = 0.0
    elif eta is None:
        eta = 1.0 if sampler in STOCHASTIC else 0.0
    if schedule_map is None:
        schedule_map = model.schedule.schedule_map(y)
    times = _row_grids(steps, grid, model.schedule, schedule_map, lam_ref)
    shape = (y.shape[0], model.config.x_channels, *y.shape[-2:])
    if noise is None:
        noise = lambda stage: torch.randn(shape, generator=generator, device=y.device)  # noqa: E731
    predict_noise = _noise_predictor(model, autocast_dtype=autocast_dtype, channels_last=channels_last,
                                     compile=compile)
    order = {"dpm_solver_2m": 2, "dpm_solver_2m_sde": 2, "dpm_solver_3m": 3}.get(sampler, 0)
    x = noise(0).to(y.device, torch.float32)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x̂0, log-SNR step into it), newest first
    gamma_s = _gamma(model, times[..., 0], schedule_map)
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled("Sampling was stopped.")
        gamma_t = gamma_s
        eps_hat = predict_noise(x, y, gamma_t)
        x0_hat = predict_data(x, eps_hat, gamma_t, clip)
        if i == steps - 1:
            x = x0_hat  # t_0 = 0: the sample is the data prediction
        else:
            gamma_s = _gamma(model, times[..., i + 1], schedule_map)
            fresh = noise(i + 1).to(y.device, torch.float32) if eta > 0 else None
            if order:
                x, step = dpm_solver_step(x, x0_hat, history, gamma_t, gamma_s, eta, fresh)
                history = [(x0_hat, step), *history][:order - 1]
            else:
                x = ddim_step(x, x0_hat, gamma_t, gamma_s, eta, fresh)
        if progress is not None:
            progress(i + 1, steps)
    return x


@torch.no_grad()
def sample_statistics(
    model: CVDM,
    y: torch.Tensor,
    n_samples: int,
    *,
    steps: int,
    sampler: str = DEFAULT_SAMPLER,
    eta: float | None = None,
    clip: float | None = 1.0,
    grid: str = DEFAULT_GRID,
    max_batch: int | None = None,
    keep_samples: bool = False,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> SampleStatistics:
    """Mean, unbiased variance and γ(0.5, c) of ``n_samples`` samples per input.

    ``y``: the model's input ``(B, Cy, H, W)``; the statistics are of ``b + s r̂`` for a
    residual model (:meth:`CVDM.condition`), in normalised target units. λ(c) is computed once; the N samples of each
    input are drawn together as one batch (at most ``max_batch`` rows at a
    time, merged with Chan's parallel variance update). Other arguments as in
    :func:`sample` (the ``log_snr`` grid follows each input's own λ map).
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
        draws = sample(
            model, y.repeat_interleave(k, 0), steps=steps, sampler=sampler, eta=eta, clip=clip, grid=grid,
            schedule_map=schedule_map.repeat_interleave(k, 0), generator=generator,
            autocast_dtype=autocast_dtype, channels_last=channels_last, compile=compile,
            progress=chunk_progress, should_stop=should_stop,
        ).reshape(batch, k, *schedule_map.shape[1:])
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
