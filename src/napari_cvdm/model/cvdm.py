"""The CVDM model: forward process and the four-term training loss.

``x0`` is the normalised target ``(B, x_channels, H, W)``, ``y`` the normalised
condition ``(B, y_channels, H, W)`` on the same grid. Variance-preserving
forward process ``x_t = sqrt(γ) x0 + sqrt(1 − γ) ε`` with γ = γ(t, y) per pixel.

Loss (paper eq. 6 with the reference code's weights)::

    L = mean(L_noise) + 2 mean(L_ode) + 2 mean(L_prior) + 2 mean(L_reg)
    L_noise = (ε − ε̂)²
    L_ode   = (∂γ/∂t + β γ)² + (γ(0, y) − 1)² + γ(1, y)²
    L_prior = ½ (γ1 x0² − γ1 − log(1 − γ1)),  γ1 = γ(1, y)
    L_reg   = α (∂²γ/∂t²)²,  α = 1e-3   (all samples, not only the first)

The fixed (``cddpm``) schedule has no schedule parameters and trains on
``L_noise`` alone; its schedule terms are still reported as diagnostics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from .schedule import SCHEDULE_KINDS, Schedule
from .unet import DENOISER_PRESETS, SCHEDULE_PRESETS, UNet

ODE_WEIGHT = 2.0
PRIOR_WEIGHT = 2.0
REGULARISER_WEIGHT = 2.0
REGULARISER_ALPHA = 1e-3


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CVDM: channel counts, size preset and schedule kind."""

    x_channels: int = 1
    y_channels: int = 1
    preset: str = "small"
    schedule: str = "cvdm"

    def __post_init__(self):
        if self.preset not in DENOISER_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {tuple(DENOISER_PRESETS)}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULE_KINDS}")
        if self.x_channels < 1 or self.y_channels < 1:
            raise ValueError("x_channels and y_channels must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**data)


class LossTerms(NamedTuple):
    """Weighted total and each unweighted term's batch mean (scalars)."""

    total: torch.Tensor
    noise: torch.Tensor
    ode: torch.Tensor
    prior: torch.Tensor
    regulariser: torch.Tensor


def low_discrepancy_times(batch: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """``t_i = (u + i/B) mod 1`` with one uniform ``u``: an evenly spread batch of times."""
    u = torch.rand((), generator=generator, device=device)
    return (u + torch.arange(batch, device=device) / batch) % 1.0


class CVDM(nn.Module):
    """Denoiser plus schedule. ``forward`` is not used; call :meth:`loss`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.denoiser = UNet(
            config.x_channels + config.y_channels,
            config.x_channels,
            DENOISER_PRESETS[config.preset],
            gamma_channels=config.x_channels,
        )
        self.schedule = Schedule(
            config.schedule, config.y_channels, config.x_channels, SCHEDULE_PRESETS[config.preset]
        )

    def predict_noise(self, x_t: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """ε̂ = ε_θ(concat[x_t, y], γ_t), shaped like ``x_t``."""
        return self.denoiser(torch.cat([x_t, y], dim=1), gamma)

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

        schedule_map = self.schedule.schedule_map(y)
        terms = self.schedule.terms(t, schedule_map)
        # α and σ from log γ: sqrt(γ) would give NaN gradients where γ underflows to 0
        alpha = torch.exp(0.5 * terms.log_gamma)
        sigma = (-torch.expm1(terms.log_gamma)).clamp_min(1e-12).sqrt()
        x_t = alpha * x0 + sigma * noise
        noise_loss = (noise - self.predict_noise(x_t, y, terms.gamma)).pow(2).mean()

        gamma_start = self.schedule.gamma(0.0, schedule_map)
        log_gamma_end = self.schedule.terms(torch.ones_like(t), schedule_map).log_gamma
        gamma_end = torch.exp(log_gamma_end)
        ode_loss = (
            (terms.d_gamma + terms.beta * terms.gamma).pow(2)
            + (gamma_start - 1).pow(2)
            + gamma_end.pow(2)
        ).mean()
        # log(1 − γ1) via expm1 stays exact when γ1 is close to 1
        log_one_minus_gamma_end = torch.log(-torch.expm1(log_gamma_end))
        prior_loss = (0.5 * (gamma_end * x0.pow(2) - gamma_end - log_one_minus_gamma_end)).mean()
        regulariser_loss = (REGULARISER_ALPHA * terms.d2_gamma.pow(2)).mean()

        total = noise_loss
        if self.schedule.learned:
            total = (
                total
                + ODE_WEIGHT * ode_loss
                + PRIOR_WEIGHT * prior_loss
                + REGULARISER_WEIGHT * regulariser_loss
            )
        return LossTerms(total, noise_loss, ode_loss, prior_loss, regulariser_loss)
