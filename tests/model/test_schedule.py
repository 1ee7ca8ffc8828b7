import numpy as np
import pytest
import torch

from napari_cvdm.model import SCHEDULE_KINDS, Schedule
from napari_cvdm.model.unet import SCHEDULE_PRESETS


def _randomised_schedule(kind: str, seed: int) -> Schedule:
    torch.manual_seed(seed)
    schedule = Schedule(kind, y_channels=2, x_channels=1, size=SCHEDULE_PRESETS["tiny"]).double()
    with torch.no_grad():
        for parameter in schedule.parameters():
            parameter.add_(torch.randn_like(parameter))
    return schedule


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gamma_is_one_at_zero_and_strictly_decreasing(kind, seed):
    schedule = _randomised_schedule(kind, seed)
    y = torch.randn(3, 2, 9, 7, dtype=torch.float64)
    schedule_map = schedule.schedule_map(y)
    times = torch.linspace(0, 1, 65, dtype=torch.float64)
    gammas = torch.stack([schedule.gamma(t, schedule_map) for t in times])
    assert torch.equal(gammas[0], torch.ones_like(gammas[0]))
    assert (gammas[1:] < gammas[:-1]).all()
    assert (gammas > 0).all()


@pytest.mark.parametrize("kind", ["cvdm", "cvdm_simple"])
def test_tau_tilde_is_zero_at_zero(kind):
    schedule = _randomised_schedule(kind, 3)
    assert schedule.time(torch.zeros(1, dtype=torch.float64)).tau_tilde.item() == 0.0


def test_cvdm_simple_has_one_lambda_per_image_and_cddpm_none():
    y = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    simple = _randomised_schedule("cvdm_simple", 4).schedule_map(y)
    assert torch.allclose(simple, simple[:, :, :1, :1].expand_as(simple))
    assert not torch.allclose(simple[0], simple[1])
    fixed = _randomised_schedule("cddpm", 4)
    assert torch.equal(fixed.schedule_map(y), torch.ones(2, 1, 8, 8, dtype=torch.float64))
    assert not list(fixed.parameters())


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_analytic_time_derivatives_match_finite_differences(kind):
    schedule = _randomised_schedule(kind, 5)
    y = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    schedule_map = schedule.schedule_map(y).detach()
    t = torch.tensor([0.1, 0.35, 0.6, 0.85], dtype=torch.float64)
    h = 1e-5
    terms = schedule.terms(t, schedule_map)
    plus = schedule.gamma(t + h, schedule_map)
    minus = schedule.gamma(t - h, schedule_map)
    d_numeric = (plus - minus) / (2 * h)
    d2_numeric = (plus - 2 * terms.gamma + minus) / h**2

    def relative_error(analytic, numeric):
        return ((analytic - numeric).abs().max() / numeric.abs().max()).item()

    assert relative_error(terms.d_gamma, d_numeric) < 1e-3
    assert relative_error(terms.d2_gamma, d2_numeric) < 1e-3
    assert torch.allclose(terms.log_gamma.exp(), terms.gamma)


def _smooth_schedule(seed: int) -> Schedule:
    """A residual model's schedule network (λ at 1/4 resolution, reflect padding), weights off their init."""
    torch.manual_seed(seed)
    schedule = Schedule("cvdm", y_channels=2, x_channels=1, size=SCHEDULE_PRESETS["tiny"],
                        downsample=4, padding="reflect").double()
    with torch.no_grad():
        for parameter in schedule.spatial_net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return schedule


def test_a_constant_input_gives_a_flat_lambda():
    y = torch.full((1, 2, 40, 56), 0.3, dtype=torch.float64)
    lam = _smooth_schedule(0).schedule_map(y)
    assert float(lam.max() - lam.min()) < 1e-9 * float(lam.mean())
    # the paper's zero-padded network sees a dark frame around the same input
    paper = _randomised_schedule("cvdm", 0).schedule_map(y)
    assert float(paper.max() - paper.min()) > 1e-3 * float(paper.mean())


def test_smooth_lambda_has_no_structure_finer_than_its_resolution():
    # stripe measure: the fraction of λ's variance above 1/8 cycle per pixel (the coarse grid's
    # Nyquist is 1/8 for downsample 4; bilinear upsampling leaves only its small side lobes there)
    from skimage.data import camera

    image = torch.from_numpy(camera()[::2, ::2].astype(np.float64) / 255.0)
    y = torch.stack([image, image.flip(-1)])[None]
    lam = _smooth_schedule(1).schedule_map(y)[0, 0].detach().numpy()
    power = np.abs(np.fft.fft2(lam - lam.mean())) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(lam.shape[0]), np.fft.fftfreq(lam.shape[1]), indexing="ij")
    fine = np.maximum(np.abs(fy), np.abs(fx)) > 1 / 8
    assert power[fine].sum() < 0.05 * power.sum()
