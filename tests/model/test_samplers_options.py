"""SamplingOptions / RuntimeOptions, and the sampler classes' formulas that test_samplers.py does not pin."""

import dataclasses

import pytest
import torch

from napari_cvdm.model.samplers import (
    DEFAULT_CLIP, DEFAULT_GRID, DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_TYPES, SAMPLERS, Ancestral,
    DPMSolver2M, DPMSolver2MSDE, RuntimeOptions, SamplingOptions, half_log_snr,
)


def test_defaults_are_the_module_constants_and_eta_follows_the_sampler():
    options = SamplingOptions()
    assert (options.sampler, options.steps, options.clip, options.grid) == (
        DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_CLIP, DEFAULT_GRID)
    assert {name: SamplingOptions(name).eta for name in SAMPLERS} == {
        "ancestral": 1.0, "ddim": 0.0, "dpm_solver_2m": 0.0, "dpm_solver_2m_sde": 1.0}
    assert SamplingOptions("ddim", eta=0.3).eta == 0.3
    assert SamplingOptions("dpm_solver_2m", eta=0.3).eta == 0.0  # deterministic: η is ignored


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingOptions().steps = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        RuntimeOptions().compile = True


@pytest.mark.parametrize("field,value", [
    ("sampler", "euler"), ("steps", 0), ("steps", 2.5), ("steps", True), ("eta", 1.5), ("eta", float("nan")),
    ("clip", 0.0), ("clip", -1.0), ("grid", "cosine"), ("log_snr_range", (9.0, 8.0)),
    ("log_snr_range", (None, float("nan"))), ("log_snr_range", (None, 25.0)), ("log_snr_range", 8.0),
])
def test_bad_sampling_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingOptions(**{field: value})


@pytest.mark.parametrize("field,value", [("autocast_dtype", torch.int8), ("autocast_dtype", "bf16"),
                                         ("channels_last", 1), ("compile", "yes")])
def test_bad_runtime_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} "):
        RuntimeOptions(**{field: value})


def test_resolve_takes_the_given_settings_then_the_models_then_the_defaults():
    model = {"name": "ddim", "steps": 50, "eta": 0.5, "clip": None, "grid": "uniform"}
    assert SamplingOptions.resolve(model) == SamplingOptions("ddim", 50, 0.5, None, "uniform")
    given = SamplingOptions.resolve(model, sampler="ancestral", steps=7, eta=0.2, grid="log_snr")
    assert given == SamplingOptions("ancestral", 7, 0.2, None, "log_snr")
    assert SamplingOptions.resolve({}) == SamplingOptions() == SamplingOptions.resolve(None)
    assert SamplingOptions.resolve({"name": "ancestral"}).eta == 1.0  # the sampler's own η default
    narrowed = SamplingOptions.resolve({"log_snr_range": [None, 8.0]}, steps=4)
    assert narrowed.log_snr_range == (None, 8.0) and SamplingOptions().log_snr_range[1] > 8.0


def test_each_sampler_name_makes_a_fresh_instance_of_its_class():
    options = SamplingOptions("dpm_solver_2m")
    first, second = options.make_sampler(), options.make_sampler()
    assert type(first) is SAMPLER_TYPES["dpm_solver_2m"] is DPMSolver2M and first is not second


def _gammas(seed: int):
    g = torch.Generator().manual_seed(seed)
    gamma_t = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64) * 0.5 + 0.1
    gamma_s = gamma_t + (1 - gamma_t) * torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64) * 0.9
    gamma_u = gamma_s + (1 - gamma_s) * torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64) * 0.9
    return g, gamma_t, gamma_s, gamma_u


def test_2m_second_step_is_the_documented_formula():
    """x_u = (σ_u/σ_s) x_s − α_u expm1(−h) (x̂0 + h/(2 h_prev) (x̂0 − x̂0_prev))."""
    g, gamma_t, gamma_s, gamma_u = _gammas(6)
    x_t, x0_a, x0_b = (torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    solver = DPMSolver2M()
    x_s = solver.step(x_t, x0_a, gamma_t, gamma_s, None)
    h_prev, h = (half_log_snr(gamma_s) - half_log_snr(gamma_t), half_log_snr(gamma_u) - half_log_snr(gamma_s))
    expected = ((1 - gamma_u) / (1 - gamma_s)).sqrt() * x_s \
        - gamma_u.sqrt() * torch.expm1(-h) * (x0_b + h / (2 * h_prev) * (x0_b - x0_a))
    assert torch.allclose(solver.step(x_s, x0_b, gamma_s, gamma_u, None), expected, rtol=1e-12, atol=1e-12)


def test_2m_sde_at_eta_zero_is_2m_and_its_first_step_at_eta_one_is_ancestral():
    g, gamma_t, gamma_s, gamma_u = _gammas(7)
    x_t, x0_a, x0_b, xi = (torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64) for _ in range(4))
    ode, sde0 = DPMSolver2M(), DPMSolver2MSDE(eta=0.0)
    assert not sde0.needs_noise
    for x0_hat, (a, b) in ((x0_a, (gamma_t, gamma_s)), (x0_b, (gamma_s, gamma_u))):
        assert torch.equal(ode.step(x_t, x0_hat, a, b, None), sde0.step(x_t, x0_hat, a, b, None))
    first = DPMSolver2MSDE().step(x_t, x0_a, gamma_t, gamma_s, xi)
    assert torch.allclose(first, Ancestral().step(x_t, x0_a, gamma_t, gamma_s, xi), rtol=1e-9, atol=1e-10)
