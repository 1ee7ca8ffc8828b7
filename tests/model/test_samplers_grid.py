"""The log-SNR grid's τ̃ in float32 against float64 on the shipped QPI model (no float64 copy needed)."""

import copy
from pathlib import Path

import numpy as np
import torch

from napari_cvdm.checkpoint import load_model
from napari_cvdm.model import samplers

MODEL = Path(__file__).resolve().parents[2] / "models" / "cvdm-qpi-residual.safetensors"


def _tau_tilde_float64_by_difference(time, t: torch.Tensor) -> torch.Tensor:
    """The definition τ̃ = f(t) − f(0), evaluated on a float64 copy (the old method)."""
    time = copy.deepcopy(time).double()
    softplus = torch.nn.functional.softplus
    w1, w2, w3 = softplus(time.raw_w1), softplus(time.raw_w2), softplus(time.raw_w3)

    def f(t):
        linear = w1 * t + time.b1
        return linear + (w3 * torch.sigmoid(w2 * linear.unsqueeze(-1) + time.b2)).sum(-1)

    return f(t) - f(torch.zeros((), dtype=torch.float64))


@torch.no_grad()
def test_float32_tau_tilde_and_log_snr_grid_match_float64_on_the_trained_model():
    model, _ = load_model(MODEL)
    t = torch.from_numpy(samplers._TABLE_T)
    exact = _tau_tilde_float64_by_difference(model.schedule.time, t)
    ours = model.schedule.time(t.float()).tau_tilde.double()
    # float32 rounding down to t = 1e-9 (f(t) − f(0) in float32 is off by > 100 % there)
    assert float(((ours - exact).abs() / exact).max()) < 2e-6
    for lam in (0.1, 1.0, 10.0):  # reference λ of the grid, across the range of λ maps
        log_gamma = np.minimum(-lam * exact.numpy(), -1e-300)
        reference = log_gamma - np.log(-np.expm1(log_gamma))
        assert np.allclose(samplers._log_snr_table(model.schedule, lam), reference, rtol=1e-6, atol=1e-5)
        grid = samplers.time_grid(20, kind="log_snr", schedule=model.schedule, lam=lam)
        assert grid[-2] < 1e-2  # the grid reaches the small-t end where f(t) − f(0) cancels in float32
        original = samplers._log_snr_table
        try:
            samplers._log_snr_table = lambda schedule, lam, table=reference: table
            grid64 = samplers.time_grid(20, kind="log_snr", schedule=model.schedule, lam=lam)
        finally:
            samplers._log_snr_table = original
        assert torch.allclose(grid, grid64, rtol=1e-5, atol=0)
