"""The CVDM model: forward process and the four-term training loss.

``x0`` is the normalised target ``(B, x_channels, H, W)``, ``y`` the normalised
condition ``(B, y_channels, H, W)`` on the same grid. Variance-preserving
forward process ``x_t = sqrt(γ) x0 + sqrt(1 − γ) ε`` with γ = γ(t, y) per pixel.

Loss (paper eq. 6 with the reference code's weights)::

    L = mean(L_noise) + 2 mean(L_ode) + 2 mean(L_prior) + 2 mean(L_reg)
    L_noise = (ε − ε̂)²
    L_ode   = (∂γ/∂t + β γ)² + γ(1, y)²
    L_prior = ½ (γ1 x0² − γ1 − log(1 − γ1)),  γ1 = γ(1, y)
    L_reg   = α (∂²γ/∂t²)²,  α = 1e-3   (all samples, not only the first)

The paper's L_ode also has (γ(0, y) − 1)². Here γ(0, y) = exp(−λ(y) τ̃(0)) = 1
exactly, because τ̃(0) = 0 by construction (:class:`.schedule.MonotoneTime`), so
that term and its gradient are identically zero and are not computed: every
model file, old or new, has the same loss with or without it.

The fixed (``cddpm``) schedule has no schedule parameters and trains on
``L_noise`` alone; its schedule terms are still reported as diagnostics.

Predict-and-refine (residual) formulation, every ``ModelConfig.base`` but ``"none"``
-------------------------------------------------------------------------------
A base estimate ``b(y)`` on the output grid carries what a direct method
already gets right; the diffusion models only the rest,
``r = (x0 − b) / s`` with a fixed ``residual_scale`` s chosen so that r is
about unit size (RDDM, Resfusion, ResShift; Whang et al., CVPR 2022, "deblurring
via stochastic refinement"). Nothing else changes: the condition the
schedule and the denoiser see is ``c = [y, b]``, and every formula above holds
with ``x0 → r`` and ``y → c``:

    r_t = sqrt(γ) r + sqrt(1 − γ) ε,    γ = γ(t, c) = exp(−λ(c) τ̃(t))
    L_noise = (ε − ε_θ([r_t, c], γ_t))²
    L_prior = ½ (γ1 r² − γ1 − log(1 − γ1))

so ``∂L_prior/∂λ ∝ γ1 (1 − r²) τ̃(1)``-type terms pull λ up where the *base is
wrong* (|r| large), instead of where the target is bright. Sampling draws r̂ with
any sampler unchanged (x̂0 is clipped at ±2/s, the largest |x0 − b| for data and
base in [−1, 1]) and returns ``x̂ = b + s r̂``: the mean of N samples is
``b + s·mean(r̂)``, the variance ``s²·var(r̂)``, the γ map the residual schedule's.

Bases (``ModelConfig.base``; what each adds to the network is :data:`BASE_LAYOUTS`, how each is
built from data is its class in :mod:`napari_cvdm.residual.bases`):

- ``"physics"``: b is computed outside the network from the physics (QPI:
  transport of intensity on the whole image plane) and arrives as the last
  ``x_channels`` channels of the condition, normalised like the target;
- ``"predictor"``: b = P(y), a U-Net of the denoiser's size trained jointly with
  ``L_base = (P(y) − x0)²`` (so P estimates the posterior mean E[x0 | y]); the
  diffusion losses see b through a stop-gradient, so they never pull P away from it.
  ``L = L_CVDM(r) + L_base``.
- ``"physics_predictor"``: both: b = b_TIE + s·P([y, b_TIE, ν]), P trained jointly with
  ``L_base`` as above, so P learns the posterior mean of the physics base's own residual
  (on noisy QPI stacks a one-pass L2 network on the TIE base beats the diffusion's mean,
  docs/results.md). ν is a constant map of the stack's noise level, which sets the
  TIE regulariser and so what the base lost (:func:`napari_cvdm.residual.tie_base.noise_level_map`);
  it arrives after b_TIE and only P sees it. The condition keeps the physics model's channels,
  ``c = [y, b]``, so a physics model fine-tunes into this one; P's zero-initialised output
  layer makes the new model start as the old one.

The reconstruction of a residual model (:func:`refinement_weight`) shrinks the
mean refinement ``d = s·mean(r̂)`` toward the base by the share of it the N samples
agree on: ``x̂ = b + w·d``. The plain mean ``b + d`` carries the sampling noise of
an N-sample mean, which costs a base that is already near the posterior mean (a
predictor, a TIE solve of a clean stack) more than the refinement gains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

import torch
from torch import nn

from .schedule import SCHEDULE_KINDS, Schedule
from .unet import DENOISER_PRESETS, PADDINGS, SCHEDULE_PRESETS, UNet



class BaseLayout(NamedTuple):
    """What a base kind adds to the network: the torch half of :mod:`napari_cvdm.residual.bases`.

    ``residual``: the model samples r = (x0 − b)/s rather than x0; ``outside``: a physics base
    b_TIE (``x_channels``) arrives after y in the model's input; ``predictor``: a U-Net P
    computes b (or, with ``outside``, s times b_TIE's correction); ``noise_map``: ν (one channel)
    follows b_TIE in the input, P's alone.
    """

    residual: bool
    outside: bool = False
    predictor: bool = False
    noise_map: bool = False


#: The layout of each ``ModelConfig.base``; ``none`` = the paper's formulation.
BASE_LAYOUTS = {
    "none": BaseLayout(residual=False),
    "physics": BaseLayout(residual=True, outside=True),
    "predictor": BaseLayout(residual=True, predictor=True),
    "physics_predictor": BaseLayout(residual=True, outside=True, predictor=True, noise_map=True),
}
BASES = tuple(BASE_LAYOUTS)

ODE_WEIGHT = 2.0
PRIOR_WEIGHT = 2.0
REGULARISER_WEIGHT = 2.0
REGULARISER_ALPHA = 1e-3


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CVDM: channel counts, size preset, schedule kind and formulation.

    ``y_channels`` counts the input's channels (a physics base adds ``x_channels``
    more to the condition). ``base``: one of :data:`BASES` (module docstring);
    ``residual_scale``: s of the residual formulation. ``schedule_downsample`` and
    ``padding`` shape the schedule network (:mod:`.schedule`). The defaults are the
    paper's formulation, so model files written before these fields load unchanged.
    """

    x_channels: int = 1
    y_channels: int = 1
    preset: str = "small"
    schedule: str = "cvdm"
    base: str = "none"
    residual_scale: float = 1.0
    schedule_downsample: int = 1
    padding: str = "zeros"

    def __post_init__(self):
        if self.preset not in DENOISER_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {tuple(DENOISER_PRESETS)}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULE_KINDS}")
        for name in ("x_channels", "y_channels", "schedule_downsample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer from 1 to 64 (got {value!r})")
        if self.base not in BASES:
            raise ValueError(f"unknown base {self.base!r}; expected one of {BASES}")
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown padding {self.padding!r}; expected one of {PADDINGS}")
        if not (isinstance(self.residual_scale, int | float) and 1e-3 <= self.residual_scale <= 1e3):
            raise ValueError(f"residual_scale must be a number from 1e-3 to 1e3 (got {self.residual_scale!r})")

    @property
    def layout(self) -> BaseLayout:
        """What the base kind adds to the network (:data:`BASE_LAYOUTS`)."""
        return BASE_LAYOUTS[self.base]

    @property
    def formulation(self) -> str:
        """``"paper"`` (CVDM on x0) or ``"residual"`` (CVDM on r = (x0 − b)/s)."""
        return "residual" if self.layout.residual else "paper"

    @property
    def condition_channels(self) -> int:
        """Channels of the condition c the schedule and denoiser see: y, plus b when residual."""
        return self.y_channels + (self.x_channels if self.layout.residual else 0)

    @property
    def input_channels(self) -> int:
        """Channels the model takes: y, plus the physics base when it comes from outside, plus
        the noise-level map ν that a corrected physics base's P sees."""
        layout = self.layout
        return self.y_channels + (self.x_channels if layout.outside else 0) + (1 if layout.noise_map else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**data)


class LossTerms(NamedTuple):
    """Weighted total and each unweighted term's batch mean (scalars); ``base`` is 0 without a predictor."""

    total: torch.Tensor
    noise: torch.Tensor
    ode: torch.Tensor
    prior: torch.Tensor
    regulariser: torch.Tensor
    base: torch.Tensor


def low_discrepancy_times(batch: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """``t_i = (u + i/B) mod 1`` with one uniform ``u``: an evenly spread batch of times."""
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(batch, device=device) / batch) % 1.0


class CVDM(nn.Module):
    """Denoiser plus schedule (plus a base predictor). ``forward`` is not used; call :meth:`loss`.

    Inputs ``y`` have ``config.input_channels`` channels; :meth:`condition` turns them into
    the condition ``c`` and the base ``b`` that sampling works with (module docstring).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.denoiser = UNet(
            config.x_channels + config.condition_channels,
            config.x_channels,
            DENOISER_PRESETS[config.preset],
            gamma_channels=config.x_channels,
            padding=config.padding,
        )
        self.schedule = Schedule(
            config.schedule, config.condition_channels, config.x_channels, SCHEDULE_PRESETS[config.preset],
            downsample=config.schedule_downsample, padding=config.padding,
        )
        #: weight of L_prior (the oracle benchmark's ablation sets it to 0)
        self.prior_weight = PRIOR_WEIGHT
        self.base_net = None
        if config.layout.predictor:
            self.base_net = UNet(config.input_channels, config.x_channels, DENOISER_PRESETS[config.preset],
                                 padding=config.padding)

    def condition(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(c, b)``: the condition ``(B, condition_channels, H, W)`` and the base ``(B, Cx, H, W)``
        (None for the paper's formulation, where ``c = y``).

        The input ``y`` ``(B, input_channels, H, W)`` is ``[y, b_TIE, ν]`` as far as the layout has
        them; b = b_TIE, P(y), or b_TIE + s·P(y). The condition carries b through a stop-gradient.
        """
        config = self.config
        layout = config.layout
        if not layout.residual:
            return y, None
        if layout.outside and self.base_net is None:
            return y, y[:, config.y_channels:]
        base = y[:, config.y_channels:config.condition_channels] if layout.outside else None  # ν may follow
        if self.base_net is not None:
            base = compose_residual(base, self.base_net(y), config.residual_scale)
        return torch.cat([y[:, :config.y_channels], base.detach()], dim=1), base

    def to_output(self, residual: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """The sampled quantity back in normalised target units: ``b + s r`` (``r`` itself without a base)."""
        return compose_residual(base, residual, self.config.residual_scale)

    @property
    def clip(self) -> float:
        """Data range of x̂0 in the sampled space: ±1, or ±2/s for a residual."""
        return 2.0 / self.config.residual_scale if self.config.layout.residual else 1.0

    def predict_noise(self, x_t: torch.Tensor, c: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """ε̂ = ε_θ(concat[x_t, c], γ_t), shaped like ``x_t``; ``c`` from :meth:`condition`."""
        return self.denoiser(torch.cat([x_t, c], dim=1), gamma)

    def loss(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """The CVDM loss on one batch. ``t`` ``(B,)`` and ``noise`` default to random draws."""
        batch = x0.shape[0]
        if t is None:
            t = low_discrepancy_times(batch, generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        c, base = self.condition(y)
        base_loss = torch.zeros((), device=x0.device)
        if base is not None:
            if self.base_net is not None:
                base_loss = (base - x0).pow(2).mean()
            x0 = (x0 - base.detach()) / self.config.residual_scale
        return self._diffusion_loss(x0, c, t, noise, base_loss)

    def _diffusion_loss(self, x0, y, t, noise, base_loss) -> LossTerms:
        schedule_map = self.schedule.schedule_map(y)
        terms = self.schedule.terms(t, schedule_map)
        # α and σ from log γ: sqrt(γ) would give NaN gradients where γ underflows to 0
        alpha = torch.exp(0.5 * terms.log_gamma)
        sigma = (-torch.expm1(terms.log_gamma)).clamp_min(1e-12).sqrt()
        x_t = alpha * x0 + sigma * noise
        noise_loss = (noise - self.predict_noise(x_t, y, terms.gamma)).pow(2).mean()

        log_gamma_end = self.schedule.terms(torch.ones_like(t), schedule_map).log_gamma
        gamma_end = torch.exp(log_gamma_end)
        ode_loss = ((terms.d_gamma + terms.beta * terms.gamma).pow(2) + gamma_end.pow(2)).mean()
        # log(1 − γ1) via expm1 stays exact when γ1 is close to 1
        log_one_minus_gamma_end = torch.log(-torch.expm1(log_gamma_end))
        prior_loss = (0.5 * (gamma_end * x0.pow(2) - gamma_end - log_one_minus_gamma_end)).mean()
        regulariser_loss = (REGULARISER_ALPHA * terms.d2_gamma.pow(2)).mean()

        total = noise_loss + base_loss
        if self.schedule.learned:
            total = (
                total
                + ODE_WEIGHT * ode_loss
                + self.prior_weight * prior_loss
                + REGULARISER_WEIGHT * regulariser_loss
            )
        return LossTerms(total, noise_loss, ode_loss, prior_loss, regulariser_loss, base_loss)


def compose_residual(base, residual, scale: float):
    """``b + s·r``, the residual formulation's output from its base b and residual r (tensors or
    arrays of one shape, normalised target units); ``r`` itself when there is no base (None)."""
    return residual if base is None else base + scale * residual


def refinement_weight(refinement: np.ndarray, variance: np.ndarray, n_samples: int) -> float:
    """The weight w ∈ [0, 1] of a residual model's mean refinement in its reconstruction ``b + w·d``.

    ``refinement`` d = mean of the N samples − b and ``variance`` their unbiased per-pixel
    variance (same shape, any unit, the same for both). d estimates the posterior-mean
    refinement μ with the noise of an N-sample mean, ``E‖d‖² = ‖μ‖² + Σ var / N``, so the
    positive-part James–Stein weight keeps the share of d that is not sampling noise::

        w = max(0, 1 − Σ var / (N ‖d‖²))

    w = 1 when there is no spread to judge by (N = 1) or nothing to shrink (d = 0).
    """
    power = float(np.sum(np.square(refinement, dtype=np.float64)))
    if n_samples < 2 or power == 0.0:
        return 1.0
    noise = float(np.sum(variance, dtype=np.float64)) / n_samples
    return float(min(1.0, max(0.0, 1.0 - noise / power)))
