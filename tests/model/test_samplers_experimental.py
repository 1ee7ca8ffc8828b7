"""The benchmark-only samplers of benchmarks/experimental_samplers.py (imported from there via sys.path)."""

import sys
from pathlib import Path

import torch

from napari_cvdm.model import SAMPLERS, SamplingOptions
from napari_cvdm.model.samplers import DPMSolver2M
from test_samplers import flow_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from experimental_samplers import EXPERIMENTAL_SAMPLERS, DPMSolver3M  # noqa: E402


def test_third_order_solver_converges_at_order_three_to_the_exact_flow_on_the_log_snr_grid():
    """As the order test of test_samplers.py, for 3M: the error shrinks by about 2³ per doubling."""
    errors = flow_errors("dpm_solver_3m")
    assert 0.6 * 8 < errors[0] / errors[1] < 1.6 * 8


def test_registered_for_the_options_but_not_offered_to_users():
    assert EXPERIMENTAL_SAMPLERS == ("dpm_solver_3m",)
    assert SamplingOptions("dpm_solver_3m", eta=1.0).eta == 0.0  # deterministic
    assert "dpm_solver_3m" not in SAMPLERS


def test_first_two_steps_and_flat_pixels_are_second_order():
    """Until two earlier evaluations exist, and wherever a previous step is flat, 3M is the 2M step."""
    g = torch.Generator().manual_seed(5)
    gammas = torch.sort(torch.rand(4, 1, 1, 4, 4, generator=g, dtype=torch.float64) * 0.8 + 0.1, dim=0).values
    gammas[:, ..., 0] = gammas[0, ..., 0]  # column 0: γ never moves (flat log-SNR steps)
    third, second = DPMSolver3M(), DPMSolver2M()
    x = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    for k in range(3):
        x0_hat = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
        a = third.step(x, x0_hat, gammas[k], gammas[k + 1], None)
        b = second.step(x, x0_hat, gammas[k], gammas[k + 1], None)
        if k < 2:
            assert torch.equal(a, b)
        else:
            assert torch.equal(a[..., 0], b[..., 0]) and not torch.allclose(a[..., 1:], b[..., 1:])
        x = a
