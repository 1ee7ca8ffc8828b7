"""Noise schedules γ(t, y) = exp(−λ(y) · τ̃(t)), separated into space and time.

Every schedule kind is the same product of a spatial factor λ(y) and a time
factor τ̃(t), so the rest of the code never special-cases a kind:

==============  ===========================  ==========================
kind            spatial factor λ(y)           time factor τ̃(t)
==============  ===========================  ==========================
``cvdm``        softplus(S(y)) per pixel      learned, monotone
``cvdm_simple`` softplus(mean S(y)) per image learned, monotone
``cddpm``       1 everywhere                  fixed linear-β integral
==============  ===========================  ==========================

Shapes: λ and γ are shaped like the target ``(B, C, H, W)``; ``t`` is ``(B,)``.

A *smooth* spatial factor (``downsample = d > 1``, new models) is predicted on
the condition area-averaged to ``1/d`` of its size and upsampled bilinearly,
with reflect-padded convolutions: λ then has no structure finer than ``d``
pixels (no per-pixel streaks), no dark frame from zero padding, and is computed
once per image plane whatever tiles the sampler later works on. ``d = 1`` with
zero padding is the paper's per-pixel network (files written before keep it).
Because λ does not depend on t it is computed once per input, and the time
derivatives are closed-form:
``∂γ/∂t = −λ τ̃' γ`` and ``∂²γ/∂t² = γ (λ² τ̃'² − λ τ̃'')``.
The rate τ(t) ≥ 0 gives β = λ τ; consistency ``τ = τ̃'`` is enforced softly by
the ODE loss term, never assumed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNet, UNetSize

SCHEDULE_KINDS = ("cvdm", "cvdm_simple", "cddpm")

#: Keeps λ strictly positive so γ is strictly decreasing even where S(y) ≪ 0.
LAMBDA_FLOOR = 1e-4

# Linear β schedule of DDPM in continuous time: β(t) = T (β0 + (β1 − β0) t).
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 2e-2
LINEAR_BETA_STEPS = 1000


class TimeTerms(NamedTuple):
    """τ̃(t), τ̃'(t), τ̃''(t) and the rate τ(t), each shaped like t."""

    tau_tilde: torch.Tensor
    d_tau_tilde: torch.Tensor
    d2_tau_tilde: torch.Tensor
    rate: torch.Tensor


class ScheduleTerms(NamedTuple):
    """log γ, γ, ∂γ/∂t, ∂²γ/∂t² and β = λτ, each shaped like the target."""

    log_gamma: torch.Tensor
    gamma: torch.Tensor
    d_gamma: torch.Tensor
    d2_gamma: torch.Tensor
    beta: torch.Tensor


def _linear_beta_tau_tilde(t: torch.Tensor) -> TimeTerms:
    start = LINEAR_BETA_STEPS * LINEAR_BETA_START
    slope = LINEAR_BETA_STEPS * (LINEAR_BETA_END - LINEAR_BETA_START)
    d_tau = start + slope * t
    return TimeTerms(start * t + 0.5 * slope * t**2, d_tau, torch.full_like(t, slope), d_tau)


class MonotoneTime(nn.Module):
    """Learned τ̃(t), monotone with τ̃(0) = 0 by construction (VDM style).

    ``l = w1 t + b1``, ``h = sigmoid(W2 l + b2)``, ``f = l + W3·h``,
    ``τ̃ = f(t) − f(0)`` with ``w1, W2, W3 ≥ 0`` through softplus, so
    ``τ̃' = w1 (1 + Σ W3 h(1−h) W2) > 0``. The difference is evaluated without
    subtracting f(0): ``σ(a) − σ(b) = σ(a) σ(−b) (1 − e^{−(a−b)})`` with ``a − b = W2 w1 t``,
    so ``τ̃ = w1 t + Σ W3 h(t) σ(−(W2 b1 + b2)) (−expm1(−W2 w1 t))``, a sum of non-negative
    terms, accurate to float32 rounding even where τ̃ ≪ f (near t = 0). Initialised close to the linear-β
    integral so a CVDM starts from the CDDPM schedule. The rate τ(t) is a
    separate positive MLP, initialised to the same τ̃'.
    """

    def __init__(self, hidden: int = 64, rate_hidden: int = 32):
        super().__init__()
        # unit centres run past t = 1 so the sum of steps has no edge inside [0, 1]
        centres = (torch.arange(hidden) + 0.5) / hidden * 1.2
        steepness = hidden / 1.2
        target_slope = _linear_beta_tau_tilde(centres).d_tau_tilde
        self.raw_w1 = nn.Parameter(torch.tensor(_inverse_softplus(1.0)))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.raw_w2 = nn.Parameter(torch.full((hidden,), _inverse_softplus(steepness)))
        self.b2 = nn.Parameter(-steepness * centres)
        # each unit adds a smooth step of height W3_j at its centre, so f' ≈ 1 + target slope − 1
        step_heights = ((target_slope - 1.0).clamp_min(1e-3) * 1.2 / hidden).tolist()
        self.raw_w3 = nn.Parameter(torch.tensor([_inverse_softplus(v) for v in step_heights]))
        # rate τ(t) = softplus(linear(t) + MLP(t)), starting from the linear part ≈ τ̃'(t)
        self.rate_linear = nn.Linear(1, 1)
        self.rate_net = nn.Sequential(
            nn.Linear(1, rate_hidden), nn.SiLU(), nn.Linear(rate_hidden, rate_hidden), nn.SiLU(),
            nn.Linear(rate_hidden, 1),
        )
        with torch.no_grad():
            slope = LINEAR_BETA_STEPS * (LINEAR_BETA_END - LINEAR_BETA_START)
            self.rate_linear.weight.fill_(slope)
            self.rate_linear.bias.fill_(_inverse_softplus(1.0))
            nn.init.zeros_(self.rate_net[-1].weight)
            nn.init.zeros_(self.rate_net[-1].bias)

    def forward(self, t: torch.Tensor) -> TimeTerms:
        w1, w2, w3 = F.softplus(self.raw_w1), F.softplus(self.raw_w2), F.softplus(self.raw_w3)
        t_column = t.unsqueeze(-1)
        hidden = torch.sigmoid(w2 * (w1 * t_column + self.b1) + self.b2)
        off_at_zero = torch.sigmoid(-(w2 * self.b1 + self.b2))  # 1 − h(0)
        # f(t) − f(0) term by term (class docstring): no cancellation, τ̃(0) = 0 exactly
        tau_tilde = w1 * t + (w3 * hidden * off_at_zero * -torch.expm1(-w2 * w1 * t_column)).sum(-1)
        slope_hidden = hidden * (1 - hidden)
        d_f = w1 + (w3 * slope_hidden * w2 * w1).sum(-1)
        d2_f = (w3 * slope_hidden * (1 - 2 * hidden) * (w2 * w1) ** 2).sum(-1)
        rate = F.softplus(self.rate_linear(t_column) + self.rate_net(t_column)).squeeze(-1)
        return TimeTerms(tau_tilde, d_f, d2_f, rate)


class LinearBetaTime(nn.Module):
    """Fixed τ̃(t) = ∫β of DDPM's linear β schedule (1e-4 → 2e-2, T = 1000)."""

    def forward(self, t: torch.Tensor) -> TimeTerms:
        return _linear_beta_tau_tilde(t)


class Schedule(nn.Module):
    """γ(t, y) = exp(−λ(y) τ̃(t)) for one of :data:`SCHEDULE_KINDS`.

    ``y_channels``: condition channels; ``x_channels``: target channels (one
    λ map per target channel); ``size``: the S(y) network size; ``downsample``
    and ``padding``: see the module docstring.
    """

    def __init__(self, kind: str, y_channels: int, x_channels: int, size: UNetSize,
                 downsample: int = 1, padding: str = "zeros"):
        super().__init__()
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
        if int(downsample) < 1:
            raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
        self.kind = kind
        self.x_channels = x_channels
        self.downsample = int(downsample)
        self.learned = kind != "cddpm"
        if self.learned:
            self.spatial_net = UNet(y_channels, x_channels, size, padding=padding)
            with torch.no_grad():  # λ ≈ 1 at initialisation, as for the fixed schedule
                self.spatial_net.output_conv.bias.fill_(_inverse_softplus(1.0))
            self.time = MonotoneTime()
        else:
            self.spatial_net = None
            self.time = LinearBetaTime()

    def schedule_map(self, y: torch.Tensor) -> torch.Tensor:
        """λ(y) ≥ 0, shaped ``(B, x_channels, H, W)``; compute once per input."""
        if self.spatial_net is None:
            return torch.ones(
                y.shape[0], self.x_channels, *y.shape[-2:], dtype=y.dtype, device=y.device
            )
        if self.downsample > 1:
            coarse = F.interpolate(y, scale_factor=1 / self.downsample, mode="area")
            raw = F.interpolate(self.spatial_net(coarse), size=y.shape[-2:], mode="bilinear",
                                align_corners=False)
        else:
            raw = self.spatial_net(y)
        if self.kind == "cvdm_simple":
            raw = raw.mean(dim=(-2, -1), keepdim=True).expand_as(raw)
        return F.softplus(raw) + LAMBDA_FLOOR

    def gamma(self, t: torch.Tensor | float, schedule_map: torch.Tensor) -> torch.Tensor:
        """γ(t, y) in (0, 1], shaped like ``schedule_map``; ``t`` scalar or ``(B,)``."""
        t = _as_batch_time(t, schedule_map)
        tau_tilde = self.time(t).tau_tilde
        return torch.exp(-schedule_map * tau_tilde.view(-1, 1, 1, 1))

    def terms(self, t: torch.Tensor, schedule_map: torch.Tensor) -> ScheduleTerms:
        """γ and its analytic time derivatives, plus β, at times ``t`` ``(B,)``."""
        t = _as_batch_time(t, schedule_map)
        time = self.time(t)
        view = (-1, 1, 1, 1)
        lam = schedule_map
        log_gamma = -lam * time.tau_tilde.view(view)
        gamma = torch.exp(log_gamma)
        d_tau = time.d_tau_tilde.view(view)
        d_gamma = -lam * d_tau * gamma
        d2_gamma = gamma * (lam**2 * d_tau**2 - lam * time.d2_tau_tilde.view(view))
        return ScheduleTerms(log_gamma, gamma, d_gamma, d2_gamma, lam * time.rate.view(view))


def _as_batch_time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))
