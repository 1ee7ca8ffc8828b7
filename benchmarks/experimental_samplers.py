"""Samplers kept for benchmarks only: importing this module registers them with the package.

They are not offered to users: the third-order solver measured no better than 2M at the
default number of steps (docs/method.md, Sampling).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.model.samplers import FLAT_STEP, DPMSolver2M, divided_difference, register_sampler  # noqa: E402


@register_sampler
class DPMSolver3M(DPMSolver2M):
    """DPM-Solver++ 3M (data prediction, multistep; deterministic), per pixel; diffusers' notation.

    With the last two pairs (x̂0₁, h0), (x̂0₂, h1) and ``r0 = h0/h``, ``r1 = h1/h``:
    ``D1_0 = (x̂0 − x̂0₁)/r0``, ``D1_1 = (x̂0₁ − x̂0₂)/r1``, ``D1 = D1_0 + r0/(r0+r1)(D1_0 − D1_1)``,
    ``D2 = (D1_0 − D1_1)/(r0+r1)``,
    ``x_s = (σ_s/σ_t) x_t − α_s φ1 x̂0 + α_s φ2 D1 − α_s φ3 D2`` with
    ``φ1 = expm1(−h)``, ``φ2 = φ1/h + 1``, ``φ3 = (φ1 + h)/h² − 1/2``.
    The :class:`DPMSolver2M` step on the first two steps and wherever one of the three
    log-SNR steps is flat (< ``FLAT_STEP``).
    """

    name = "dpm_solver_3m"
    title = "DPM-Solver++ 3M"
    memory = 2

    def update(self, x_t, x0_hat, gamma_t, gamma_s, h, noise):
        second_order = super().update(x_t, x0_hat, gamma_t, gamma_s, h, noise)
        if len(self.history) < 2:
            return second_order
        (x0_prev, h0), (x0_prev2, h1) = self.history
        d1_0, ok0 = divided_difference(x0_hat, x0_prev, h0, h)
        d1_1, ok1 = divided_difference(x0_prev, x0_prev2, h1, h)
        third = ok0 & ok1 & (h.abs() >= FLAT_STEP)
        safe_h = h.where(third, 1.0)
        r0, r1 = h0 / safe_h, h1 / safe_h
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        alpha_s, phi1 = gamma_s.sqrt(), torch.expm1(-h)
        phi2 = phi1 / safe_h + 1
        phi3 = (phi1 + safe_h) / safe_h**2 - 0.5
        sigma_ratio = ((1 - gamma_s) / (1 - gamma_t)).sqrt()
        third_order = sigma_ratio * x_t - alpha_s * phi1 * x0_hat + alpha_s * phi2 * d1 - alpha_s * phi3 * d2
        return torch.where(third, third_order, second_order)


#: The samplers this module registers.
EXPERIMENTAL_SAMPLERS = (DPMSolver3M.name,)
