"""Reconstruction engine: shapes and units, tiling (exactness and seams), devices, cancelling."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cvdm.checkpoint import ModelInfo
from napari_cvdm.errors import Cancelled, InputError
from napari_cvdm.model import CVDM, ModelConfig, SamplingOptions, sample
from napari_cvdm.engine import (
    NOISE_BLOCK,
    NoiseField,
    ReconstructionSettings,
    available_devices,
    reconstruct,
    resolve_device,
    tile_spans,
    tile_weights,
    validate_input,
)

QPI_NORMS = {"input_normalization": {"mode": "mean"},
             "target_normalization": {"mode": "fixed", "low": [0.0], "high": [3.5]}}
SR_NORMS = {"input_normalization": {"mode": "percentile", "low_pct": 0.1, "high_pct": 99.9},
            "target_normalization": {"mode": "percentile", "low_pct": 0.1, "high_pct": 99.9}}


def _info(task: str, config: ModelConfig) -> ModelInfo:
    if task == "qpi":
        return ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad", **QPI_NORMS)
    return ModelInfo(task="sr", config=config, input_pixel_size_um=0.0626, upsampling_factor=2, **SR_NORMS)


def _tiny(task: str, seed: int = 0) -> tuple[CVDM, ModelInfo]:
    """The shipped tiny U-Nets with weights moved off their zero initialisation."""
    config = ModelConfig(x_channels=1, y_channels=2 if task == "qpi" else 1, preset="tiny")
    return _perturbed(config, seed), _info(task, config)


def _perturbed(config: ModelConfig, seed: int) -> CVDM:
    """A model of ``config`` with seeded noise on every weight (off the zero initialisation), in eval mode."""
    torch.manual_seed(seed)
    model = CVDM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class LocalNet(nn.Module):
    """A small strided conv net with a finite receptive field (no normalisation, no attention).

    ``stride = 2``: one stride-2 level, so a tile that started on an odd pixel would
    see another grid phase and differ from the whole image.
    """

    stride = 2

    def __init__(self, in_channels: int, out_channels: int, gamma_channels: int = 0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + gamma_channels, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv_out = nn.Conv2d(16, out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv_out.weight.mul_(3.0)

    def forward(self, x, gamma=None):
        height, width = x.shape[-2:]
        if gamma is not None:
            x = torch.cat([x, gamma], 1)
        x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        h = F.silu(self.conv_in(x))
        coarse = F.silu(self.down(h)).repeat_interleave(2, -2).repeat_interleave(2, -1)
        return self.conv_out(torch.cat([h, coarse], 1))[..., :height, :width]


def _local(task: str) -> tuple[CVDM, ModelInfo]:
    """A CVDM (real schedule time network and sampler) whose two spatial networks are local."""
    model, info = _tiny(task)
    torch.manual_seed(1)
    x_ch, y_ch = model.config.x_channels, model.config.y_channels
    model.denoiser = LocalNet(x_ch + y_ch, x_ch, gamma_channels=x_ch)
    model.schedule.spatial_net = LocalNet(y_ch, x_ch)
    return model.eval(), info


def _qpi_stack(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = 1.0 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.stack([base + 0.05 * rng.standard_normal(base.shape),
                     base[::-1] + 0.05 * rng.standard_normal(base.shape)]).astype(np.float32)


def _widefield(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    return (100 + 50 * np.sin(xx / 5.0) ** 2 * np.cos(yy / 7.0) ** 2 + rng.poisson(5, (height, width))
            ).astype(np.float32)


# ----------------------------------------------------------------------------- tile layout


def test_tiles_cover_the_image_start_aligned_and_overlap_enough():
    for length, tile, overlap, align in [(150, 64, 32, 2), (1000, 256, 32, 8), (257, 64, 16, 16), (64, 64, 8, 4)]:
        spans = tile_spans(length, tile, overlap, align)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % align == 0 for start, _ in spans)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a0 < b0 and a1 - b0 >= overlap
        assert max((stop - start for start, stop in spans[:-1]), default=0) <= -(-tile // align) * align
        weight_sum = np.zeros(length)
        for span in spans:
            weights = tile_weights(span, length, overlap)
            assert weights.shape == (span[1] - span[0],) and weights.min() >= 0 and weights.max() == 1
            weight_sum[span[0]:span[1]] += weights
        assert weight_sum.min() > 0.0


def test_tiles_are_as_few_as_the_overlap_allows_and_spread_evenly():
    assert tile_spans(512, 320, 32, 4) == [(0, 272), (240, 512)]  # 2 × 272 px, not 3 × 256
    assert len(tile_spans(4096, 320, 32, 4)) == 15  # ceil((4096 − 32) / (320 − 32))
    sizes = {stop - start for start, stop in tile_spans(1000, 256, 32, 8)}
    assert max(sizes) - min(sizes) < 8


def test_weights_are_zero_in_the_outer_quarter_of_each_overlap_and_one_inside():
    spans = tile_spans(300, 128, 64, 2)
    middle = tile_weights(spans[1], 300, 64)
    assert np.all(middle[:16] == 0) and np.all(middle[-16:] == 0)
    assert np.all(np.diff(middle[16:48]) > 0) and np.all(middle[48:-48] == 1)
    assert np.all(tile_weights(spans[0], 300, 64)[:-48] == 1)  # no ramp at the image border


def test_noise_field_depends_only_on_global_position():
    field = NoiseField(seed=3, plane=0, n_samples=2, channels=1)
    whole = field.window(0, (0, 150), (0, 140))
    part = field.window(0, (37, 101), (NOISE_BLOCK - 5, 130))
    assert torch.equal(part, whole[..., 37:101, NOISE_BLOCK - 5:130])
    assert not torch.equal(field.window(1, (0, 150), (0, 140)), whole)  # each step draws fresh noise
    assert not torch.equal(NoiseField(4, 0, 2, 1).window(0, (0, 150), (0, 140)), whole)
    assert abs(float(whole.std()) - 1.0) < 0.02


# ----------------------------------------------------------------------------- tiled = untiled


def test_local_network_receptive_field_fits_in_the_discarded_margin():
    """The premise of the exactness test: 2 steps of the local model see ≤ 16 px (margin of overlap 64)."""
    model, _ = _local("qpi")
    size, centre = 96, 48
    y = torch.randn(1, 2, size, size, requires_grad=True)
    start = torch.randn(1, 1, size, size, requires_grad=True)
    lam = model.schedule.schedule_map(y)
    sample_with_grad = sample.__wrapped__  # the sampler without its no_grad decorator
    out = sample_with_grad(model, y, SamplingOptions("ddim", steps=2, clip=None, grid="uniform"), schedule_map=lam,
                           noise=lambda stage: start)
    out[0, 0, centre, centre].backward()
    reach = (y.grad.abs().sum(1)[0] + start.grad.abs()[0, 0]) > 0
    rows, cols = np.nonzero(reach.numpy())
    radius = max(np.abs(rows - centre).max(), np.abs(cols - centre).max())
    assert 4 <= radius <= 16


@pytest.mark.parametrize("task", ["qpi", "sr"])
@pytest.mark.parametrize("sampler,eta,grid", [("ddim", 0.0, "uniform"), ("dpm_solver_2m", None, "log_snr"),
                                              ("dpm_solver_2m", None, "uniform"), ("ancestral", 1.0, "log_snr")])
def test_tiled_equals_untiled_for_a_local_network(task, sampler, eta, grid):
    """Also for the log-SNR grid, whose reference λ is the median over the whole plane."""
    model, info = _local(task)
    image = _qpi_stack(300, 260) if task == "qpi" else _widefield(150, 130)
    common = dict(n_samples=3, sampler=sampler, eta=eta, steps=3, seed=5, device="cpu", keep_samples=True,
                  grid=grid)
    whole = reconstruct(model, info, image, ReconstructionSettings(tile_size=None, **common))
    tiled = reconstruct(model, info, image, ReconstructionSettings(tile_size=128, tile_overlap=64, **common))
    assert tiled.metadata["tiles"][0] >= 3 and tiled.metadata["tiles"][1] >= 3
    assert tiled.metadata["grid"] == grid
    if grid == "log_snr":
        assert tiled.metadata["grid_reference_lambda"] == pytest.approx(whole.metadata["grid_reference_lambda"],
                                                                        rel=1e-6)
    scale = float(np.abs(whole.mean).max())
    assert scale > 0.1 and float(whole.variance.mean()) > 0  # a non-trivial result
    for name in ("mean", "gamma_map", "samples"):
        assert np.abs(getattr(tiled, name) - getattr(whole, name)).max() <= 1e-5 * max(scale, 1.0), name
    assert np.abs(tiled.variance - whole.variance).max() <= 1e-5 * max(float(whole.variance.max()), 1.0)


def test_misaligned_tiles_would_differ():
    """Control for the test above: the same tiles started one pixel off the stride grid do not agree."""
    import napari_cvdm.engine.run as engine  # where reconstruct() looks up the stride

    model, info = _local("qpi")
    image = _qpi_stack(300, 260)
    settings = dict(n_samples=2, sampler="ddim", eta=0.0, steps=2, seed=5, device="cpu")
    whole = reconstruct(model, info, image, ReconstructionSettings(tile_size=None, **settings))
    original = engine.network_stride
    engine.network_stride = lambda m: 1
    try:
        shifted = reconstruct(model, info, image, ReconstructionSettings(tile_size=129, tile_overlap=64, **settings))
    finally:
        engine.network_stride = original
    assert np.abs(shifted.mean - whole.mean).max() > 1e-3


def _seam_strength(model, info, image, overlap):
    """Per output map: the largest column-averaged jump of (tiled − untiled), in units of the
    untiled image's own typical column-to-column change. A seam is a line of such jumps."""
    settings = dict(n_samples=2, sampler="ddim", eta=0.0, steps=3, seed=0, device="cpu")
    whole = reconstruct(model, info, image, ReconstructionSettings(tile_size=None, **settings))
    tiled = reconstruct(model, info, image, ReconstructionSettings(tile_size=64, tile_overlap=overlap, **settings))
    assert tiled.metadata["tiles"] == [1, 3 if overlap == 0 else 5]
    strength = {}
    for name in ("mean", "gamma_map", "variance"):
        reference = getattr(whole, name).astype(np.float64)
        difference = getattr(tiled, name) - reference
        jumps = np.abs(np.diff(difference, axis=1)).mean(0)
        typical = np.median(np.abs(np.diff(reference, axis=1)).mean(0))
        strength[name] = jumps.max() / typical
    return strength


def test_tiling_the_real_unet_leaves_no_seams():
    """GroupNorm and attention make U-Net tiles differ from the whole image; the cross-fade hides it.

    Control: hard tiling (overlap 0) of the same model leaves jumps comparable to the
    image's own structure at the tile borders, so the measure can fail.
    """
    model, info = _tiny("qpi", seed=2)
    image = _qpi_stack(64, 176, seed=3)
    hard = _seam_strength(model, info, image, overlap=0)
    blended = _seam_strength(model, info, image, overlap=32)
    for name in ("mean", "gamma_map"):
        assert hard[name] > 0.3, name
        assert blended[name] < 0.5, name
        assert blended[name] < 0.25 * hard[name], name
    assert blended["variance"] < 0.5 * hard["variance"]


def _gaussian_posterior(model: CVDM, s2: float) -> CVDM:
    """The exact denoiser for x0 ~ N(0, s²) at every pixel: the true variance is known and flat."""
    model.predict_noise = lambda x_t, y, gamma: (1 - gamma).sqrt() * x_t / (gamma * s2 + 1 - gamma)
    return model


@pytest.mark.parametrize("tiles_share_draws", [True, False])
def test_variance_has_no_dip_in_tile_overlaps(monkeypatch, tiles_share_draws):
    """Per-tile variances are blended like the means, so the variance map stays flat across seams.

    The posterior variance is the same everywhere. With position-keyed noise the tiles draw
    the same samples; trained U-Nets decorrelate them (different context), emulated here by
    keying the noise to the tile. Either way the reported variance must not dip in the
    overlaps. Control: the variance of the cross-faded (kept) samples does dip when the
    tiles' draws are independent.
    """
    import napari_cvdm.engine as engine

    if not tiles_share_draws:
        window = engine.NoiseField.window
        monkeypatch.setattr(engine.NoiseField, "window", lambda self, stage, ys, xs, *samples: window(
            engine.NoiseField(hash((self.seed, ys, xs)) % 2**31, self.plane, self.n_samples, self.channels),
            stage, ys, xs, *samples))
    model, info = _tiny("qpi")
    model = _gaussian_posterior(model, s2=0.09)
    settings = dict(n_samples=48, steps=20, seed=0, device="cpu", keep_samples=True)
    tiled = reconstruct(model, info, _qpi_stack(16, 176), ReconstructionSettings(tile_size=64, tile_overlap=32,
                                                                                  **settings))
    assert tiled.metadata["tiles"] == [1, 5]
    spans = tile_spans(176, 64, 32, engine.network_stride(model))
    middle = np.zeros(176, bool)  # middle half of each cross-fade, where w ≈ 1/2
    for (_, a1), (b0, _) in zip(spans, spans[1:]):
        middle[b0 + 12:a1 - 12] = True
    inner = np.zeros(176, bool)  # columns covered by a single tile with weight 1
    weight_one = np.ones(176, int)
    for span in spans:
        weight_one[span[0]:span[1]] *= 1 + (engine.tile_weights(span, 176, 32) == 1)
    inner[(weight_one == 2)] = True
    inner &= ~middle
    reported = tiled.variance[:, middle].mean() / tiled.variance[:, inner].mean()
    assert 0.85 < reported < 1.15
    kept = tiled.samples.var(0, ddof=1)
    dip = kept[:, middle].mean() / kept[:, inner].mean()
    if tiles_share_draws:
        assert 0.85 < dip < 1.15
    else:
        assert dip < 0.75


def test_gpu_options_and_grid_are_settings():
    model, info = _tiny("qpi")
    image = _qpi_stack(32, 32)
    common = dict(n_samples=2, steps=3, tile_size=None, device="cpu")
    base = reconstruct(model, info, image, ReconstructionSettings(**common))
    nhwc = reconstruct(model, info, image, ReconstructionSettings(channels_last=True, **common))
    assert np.allclose(base.mean, nhwc.mean, atol=1e-4) and nhwc.metadata["channels_last"] is True
    assert base.metadata["grid"] == "log_snr" and base.metadata["grid_reference_lambda"][0] > 0
    uniform = reconstruct(model, info, image, ReconstructionSettings(grid="uniform", **common))
    assert uniform.metadata["grid_reference_lambda"] == [None] and not np.allclose(uniform.mean, base.mean)
    info.sampler = {**info.sampler, "grid": "uniform"}  # a model may name its own grid
    assert reconstruct(model, info, image, ReconstructionSettings(**common)).metadata["grid"] == "uniform"


# ----------------------------------------------------------------------------- outputs


def test_qpi_outputs_are_in_radians_with_the_leading_dims_kept():
    model, info = _tiny("qpi")
    stack = np.stack([_qpi_stack(40, 36, seed=s) for s in range(2)])  # (T=2, 2, H, W)
    result = reconstruct(model, info, stack, ReconstructionSettings(n_samples=3, steps=2, tile_size=None,
                                                                    keep_samples=True, device="cpu"))
    assert result.mean.shape == result.variance.shape == result.gamma_map.shape == (2, 40, 36)
    assert result.samples.shape == (2, 3, 40, 36)
    assert result.mean.dtype == np.float32 and result.unit == "rad"
    # model output is clipped to [-1, 1], i.e. [0, 3.5] rad after denormalisation
    assert result.samples.min() >= -1e-5 and result.samples.max() <= 3.5 + 1e-5
    normalised_var = reconstruct(model, info, stack[0], ReconstructionSettings(
        n_samples=3, steps=2, tile_size=None, device="cpu", keep_samples=True))
    assert np.allclose(normalised_var.variance, normalised_var.samples.var(0, ddof=1), rtol=1e-4, atol=1e-7)
    assert np.all((result.gamma_map > 0) & (result.gamma_map < 1))
    assert result.pixel_size_um == pytest.approx(0.21) and result.upsampling_factor == 1


def test_sr_output_is_upsampled_with_half_the_pixel_size():
    model, info = _tiny("sr")
    result = reconstruct(model, info, _widefield(24, 20), ReconstructionSettings(n_samples=2, steps=2, device="cpu"),
                         input_pixel_size_um=0.08)
    assert result.mean.shape == (48, 40)
    assert result.pixel_size_um == pytest.approx(0.04)
    assert result.upsampling_factor == 2


def test_progress_counts_every_step_and_should_stop_cancels():
    model, info = _tiny("qpi")
    seen = []
    settings = ReconstructionSettings(n_samples=2, steps=3, tile_size=32, tile_overlap=8, device="cpu", max_batch=1)
    result = reconstruct(model, info, _qpi_stack(48, 40), settings, progress=lambda d, t: seen.append((d, t)))
    tiles = result.metadata["tiles"][0] * result.metadata["tiles"][1]
    assert tiles == 4
    assert seen[-1] == (tiles * 2 * 3, tiles * 2 * 3) and [d for d, _ in seen] == list(range(1, tiles * 6 + 1))
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        reconstruct(model, info, _qpi_stack(48, 40), settings, should_stop=stop_after_two)
    assert len(calls) == 3


def test_sample_batches_do_not_change_the_result():
    model, info = _tiny("qpi")
    image = _qpi_stack(32, 32)
    common = dict(n_samples=5, steps=2, tile_size=None, device="cpu", sampler="ancestral")
    one = reconstruct(model, info, image, ReconstructionSettings(**common))
    chunked = reconstruct(model, info, image, ReconstructionSettings(max_batch=2, **common))
    # equal up to float32 rounding: the network's kernels round differently per batch size
    assert np.allclose(one.mean, chunked.mean, rtol=1e-4, atol=1e-4)
    assert np.allclose(one.variance, chunked.variance, rtol=1e-4, atol=1e-4)
    assert not np.allclose(one.variance, 0.0)


def test_seed_changes_samples_but_not_the_gamma_map():
    model, info = _tiny("qpi")
    image = _qpi_stack(32, 32)
    a, b = (reconstruct(model, info, image, ReconstructionSettings(n_samples=2, steps=2, seed=s, device="cpu",
                                                                   sampler="ancestral")) for s in (0, 1))
    assert not np.allclose(a.mean, b.mean)
    assert np.array_equal(a.gamma_map, b.gamma_map)


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("image,words", [
    (np.ones((32, 32), np.float32), ["QPI", "(…, 2, H, W)", "(32, 32)"]),
    (np.ones((3, 32, 32), np.float32), ["(…, 2, H, W)"]),
    (np.full((2, 32, 32), np.nan, np.float32), ["NaN"]),
    (np.ones((2, 4, 32), np.float32), ["too small"]),
    (np.ones((2, 32, 32), complex), ["complex"]),
])
def test_bad_qpi_inputs_are_refused_with_one_sentence(image, words):
    _, info = _tiny("qpi")
    with pytest.raises(InputError) as error:
        validate_input(info, image)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_sr_model_refuses_a_named_two_channel_stack():
    _, info = _tiny("sr")
    validate_input(info, np.ones((2, 32, 32), np.float32))  # unnamed: two planes of a Z stack
    with pytest.raises(InputError, match="QPI model"):
        validate_input(info, np.ones((2, 32, 32), np.float32), axes="CYX")


@pytest.mark.parametrize("settings,word", [
    (ReconstructionSettings(n_samples=0), "samples"),
    (ReconstructionSettings(sampler="euler"), "sampler"),
    (ReconstructionSettings(tile_size=64, tile_overlap=40), "overlap"),
    (ReconstructionSettings(precision="fp8"), "precision"),
    (ReconstructionSettings(grid="karras"), "grid"),
    (ReconstructionSettings(log_snr_max=0.0), "log_snr_max"),
    (ReconstructionSettings(log_snr_max="8"), "log_snr_max"),
    (ReconstructionSettings(device="tpu"), "tpu"),
])
def test_bad_settings_are_refused(settings, word):
    model, info = _tiny("qpi")
    with pytest.raises(InputError, match=word):
        reconstruct(model, info, _qpi_stack(32, 32), settings)


def test_devices():
    devices = available_devices()
    assert devices[0] == "auto" and devices[-1] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == devices[1]
    with pytest.raises(InputError, match="not available"):
        resolve_device("cuda" if "cuda" not in devices else "mps" if "mps" not in devices else "xla")


def test_pixel_size_mismatch_warns():
    model, info = _tiny("qpi")
    with pytest.warns(UserWarning, match="pixel size"):
        reconstruct(model, info, _qpi_stack(16, 16), ReconstructionSettings(n_samples=1, steps=1, device="cpu"),
                    input_pixel_size_um=0.5)


def _residual_qpi() -> tuple[CVDM, ModelInfo]:
    from napari_cvdm.residual import TIEBase

    config = ModelConfig(x_channels=1, y_channels=2, preset="tiny", base="physics", residual_scale=0.5,
                         schedule_downsample=4, padding="reflect")
    info = _info("qpi", config)
    info.base = TIEBase(strength=10.0, wavelength_um=0.521, dz_um=1.0, pixel_um=0.21, offset_rad=1.75).to_dict()
    return _perturbed(config, 3), info


def _phase_bump_stack(size: int = 48) -> np.ndarray:
    from napari_cvdm.data.simulate import phase_object_stack

    yy, xx = np.mgrid[:size, :size] / size
    phase = 1.5 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.05)
    return phase_object_stack(phase, 1.0, 0.521, 0.21).astype(np.float32)


def test_a_residual_model_that_refines_nothing_returns_its_tie_base():
    from napari_cvdm.engine import reconstruct_base

    model, info = _residual_qpi()
    # ε̂ = x_t / σ_t makes every x̂0 = 0: the residual samples are all zero
    model.predict_noise = lambda x, c, gamma: x / (1 - gamma).clamp_min(1e-12).sqrt()
    stack = _phase_bump_stack()
    out = reconstruct(model, info, stack, ReconstructionSettings(n_samples=2, device="cpu"))
    base = reconstruct_base(model, info, stack, device="cpu")
    np.testing.assert_allclose(out.mean, base, atol=1e-5)
    assert float(np.abs(out.variance).max()) < 1e-10
    # the base is the TIE phase of the whole plane, in rad, with the model's mean phase
    assert out.mean.mean() == pytest.approx(1.75, abs=1e-4) and out.metadata["formulation"] == "residual"


def test_each_planes_base_is_reported_before_its_samples():
    from napari_cvdm.engine import reconstruct_base

    model, info = _residual_qpi()
    stacks = np.stack([_phase_bump_stack(), _phase_bump_stack()[:, ::-1].copy()])  # two planes (2, 2, H, W)
    events = []
    out = reconstruct(model, info, stacks, ReconstructionSettings(n_samples=2, steps=2, device="cpu"),
                      progress=lambda done, total: events.append(("step", done)),
                      on_base=lambda plane, base: events.append(("base", plane, base)))
    bases = [e for e in events if e[0] == "base"]
    assert [e[1] for e in bases] == [0, 1]
    expected = reconstruct_base(model, info, stacks, device="cpu")
    for _, plane, base in bases:
        np.testing.assert_allclose(base, expected[plane], rtol=1e-6)
        assert base.shape == out.mean.shape[1:]
    # plane 0's base comes before any sampling step (after the TIE solve's one), plane 1's after plane 0's steps
    first, second = (next(i for i, e in enumerate(events) if e is b) for b in bases)
    assert first <= 1 and second - first - 1 > len(events) - second - 1 > 0


def test_a_us_tie_base_reports_its_stages_and_a_stop_interrupts_it():
    import dataclasses

    from napari_cvdm.residual import TIEBase
    from napari_cvdm.errors import Cancelled

    model, info = _residual_qpi()
    info.base = dataclasses.replace(TIEBase.from_dict(info.base), kind="us_tie").to_dict()
    events = []
    reconstruct(model, info, _phase_bump_stack(), ReconstructionSettings(n_samples=1, steps=2, device="cpu"),
                progress=lambda done, total: events.append(done))
    # the base's stages re-report the count before its one step is done
    beats = events[:events.index(1)]
    assert len(beats) >= 2 and set(beats) == {0}
    polls = []
    with pytest.raises(Cancelled):
        reconstruct(model, info, _phase_bump_stack(), ReconstructionSettings(n_samples=1, steps=2, device="cpu"),
                    should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert len(polls) == 2  # stopped at the base's second heartbeat, before any sampling


def test_a_residual_model_gives_the_same_schedule_map_whatever_the_tiles():
    model, info = _residual_qpi()
    stack = _phase_bump_stack(72)
    whole = reconstruct(model, info, stack, ReconstructionSettings(n_samples=1, steps=2, device="cpu",
                                                                   tile_size=None))
    tiled = reconstruct(model, info, stack, ReconstructionSettings(n_samples=1, steps=2, device="cpu",
                                                                   tile_size=32, tile_overlap=16))
    assert tiled.metadata["tiles"] != [1, 1]
    # λ is computed once per plane, so only float rounding of the blend remains
    np.testing.assert_allclose(tiled.gamma_map, whole.gamma_map, rtol=1e-5, atol=1e-6)


def test_the_input_optics_reach_the_tie_base_with_a_warning_when_they_differ():
    from napari_cvdm.engine import reconstruct_base

    model, info = _residual_qpi()
    stack = _phase_bump_stack()
    with pytest.warns(UserWarning, match="defocus"):
        far = reconstruct_base(model, info, stack, device="cpu", dz_um=2.0)
    near = reconstruct_base(model, info, stack, device="cpu")
    # the same intensity change read as twice the defocus is half the phase curvature
    assert np.ptp(far) == pytest.approx(0.5 * np.ptp(near), rel=0.02)


def test_values_too_large_for_float32_are_refused_before_computing():
    model, info = _tiny("sr")
    with pytest.raises(InputError, match="rescale"):
        reconstruct(model, info, np.full((16, 16), 1e30, np.float32), ReconstructionSettings(device="cpu"))


def test_a_result_larger_than_the_machine_is_refused_before_computing(monkeypatch):
    import napari_cvdm.engine as engine

    model, info = _tiny("sr")
    monkeypatch.setattr(engine.checks, "available_memory_bytes", lambda: 100_000)  # the outputs need 327 kB
    with pytest.raises(InputError, match="GiB"):
        reconstruct(model, info, np.ones((64, 64), np.float32), ReconstructionSettings(device="cpu", n_samples=2,
                                                                                        keep_samples=True))


def test_rounds_report_partial_results_that_end_in_the_final_one():
    """``on_partial`` sees the mean of the samples so far after each round; the last round is the result."""
    model, info = _tiny("qpi")
    image = _qpi_stack(32, 32)
    common = dict(n_samples=5, steps=2, tile_size=None, device="cpu", sampler="ancestral")
    partials = []
    final = reconstruct(model, info, image, ReconstructionSettings(max_batch=2, **common), on_partial=partials.append)
    assert [p.metadata["samples_done"] for p in partials] == [2, 4]
    assert final.metadata["samples_done"] == 5
    two = reconstruct(model, info, image, ReconstructionSettings(**{**common, "n_samples": 2}))
    assert np.allclose(partials[0].mean, two.mean, rtol=1e-4, atol=1e-4)  # the first two samples are the same
    assert not np.allclose(partials[1].mean, final.mean)
    assert not np.shares_memory(partials[0].mean, final.mean)


def test_a_stop_keeps_the_rounds_already_drawn():
    model, info = _tiny("qpi")
    settings = ReconstructionSettings(n_samples=4, steps=2, tile_size=None, device="cpu", max_batch=1)
    calls = []

    def stop_in_the_third_round():
        calls.append(1)
        return len(calls) > 5  # two evaluations per round

    with pytest.raises(Cancelled) as stopped:
        reconstruct(model, info, _qpi_stack(32, 32), settings, should_stop=stop_in_the_third_round)
    assert stopped.value.partial.metadata["samples_done"] == 2
    assert np.isfinite(stopped.value.partial.mean).all() and stopped.value.partial.variance.max() > 0
    with pytest.raises(Cancelled) as early:
        reconstruct(model, info, _qpi_stack(32, 32), settings, should_stop=lambda: True)
    assert early.value.partial is None


def test_noise_of_a_sample_does_not_depend_on_which_others_are_drawn():
    field = NoiseField(seed=1, plane=0, n_samples=4, channels=1)
    every = field.window(2, (10, 90), (5, 70))
    assert torch.equal(field.window(2, (10, 90), (5, 70), 2, 3), every[2:3])
    assert not torch.equal(every[0], every[1])


def _tiny_predictor() -> tuple[CVDM, ModelInfo]:
    config = ModelConfig(x_channels=1, y_channels=1, preset="tiny", base="predictor", residual_scale=0.5,
                         schedule_downsample=2, padding="reflect")
    return _perturbed(config, 3), _info("sr", config)


def test_a_large_plane_gets_its_predictor_base_in_blended_tiles_with_progress(monkeypatch):
    """Above BASE_TILE the predictor runs in overlapping tiles (bounded memory), each a progress step;
    with the shipped SR model the tiles' blend stays close to the whole plane's base."""
    from pathlib import Path

    import napari_cvdm.engine as engine
    from napari_cvdm.checkpoint import load_model
    from napari_cvdm.engine import reconstruct_base

    shipped, shipped_info = load_model(Path(__file__).parents[2] / "models" / "cvdm-sr-residual.safetensors", "cpu")
    image = _widefield(64, 64)  # a 128² output
    whole = reconstruct_base(shipped, shipped_info, image, device="cpu")
    monkeypatch.setattr(engine.tiling, "BASE_TILE", 64)
    monkeypatch.setattr(engine.tiling, "BASE_TILE_OVERLAP", 32)
    tiled = reconstruct_base(shipped, shipped_info, image, device="cpu")
    assert tiled.shape == whole.shape == (128, 128)
    assert not np.array_equal(tiled, whole)  # GroupNorm sees each tile's own statistics
    assert np.abs(tiled - whole).mean() < 0.05 * np.abs(whole - whole.mean()).mean()
    model, info = _tiny_predictor()
    base_tiles = engine.tiling.base_tiling(model, 96, 80)
    assert len(base_tiles.rows) * len(base_tiles.cols) > 1
    seen = []
    reconstruct(model, info, _widefield(48, 40), ReconstructionSettings(n_samples=1, steps=2, tile_size=None,
                                                                        device="cpu"),
                progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(base_tiles.rows) * len(base_tiles.cols) + 1 + 2  # base, λ, steps


def test_a_large_plane_gets_its_smooth_schedule_map_in_blended_tiles(monkeypatch):
    """λ of a smooth schedule is computed in large blended tiles beyond SCHEDULE_TILE (bounded
    attention memory); the map stays close to the whole plane's."""
    from pathlib import Path

    import napari_cvdm.engine as engine
    from napari_cvdm.checkpoint import load_model

    model, info = load_model(Path(__file__).parents[2] / "models" / "cvdm-qpi-residual.safetensors", "cpu")
    settings = ReconstructionSettings(n_samples=1, steps=1, tile_size=None, device="cpu")
    whole = reconstruct(model, info, _qpi_stack(192, 192), settings)
    monkeypatch.setattr(engine.tiling, "SCHEDULE_TILE", 96)
    monkeypatch.setattr(engine.tiling, "SCHEDULE_TILE_OVERLAP", 32)
    tiled = reconstruct(model, info, _qpi_stack(192, 192), settings)
    assert not np.array_equal(tiled.gamma_map, whole.gamma_map)
    assert np.abs(tiled.gamma_map - whole.gamma_map).mean() < 0.2 * whole.gamma_map.std()  # 0.11 measured


def test_a_residual_models_mean_shrinks_its_refinement_toward_the_base_unless_asked_not_to():
    from napari_cvdm.model import refinement_weight
    from napari_cvdm.engine import reconstruct_base

    model, info = _residual_qpi()
    stack = _phase_bump_stack()
    settings = ReconstructionSettings(n_samples=4, steps=2, device="cpu", keep_samples=True, tile_size=32,
                                      tile_overlap=16)
    shrunk = reconstruct(model, info, stack, settings)
    plain = reconstruct(model, info, stack, replace(settings, shrink_refinement=False))
    base = reconstruct_base(model, info, stack, device="cpu")
    np.testing.assert_allclose(plain.mean, plain.samples.mean(0), atol=1e-5)
    np.testing.assert_allclose(shrunk.samples, plain.samples)
    np.testing.assert_allclose(shrunk.variance, plain.variance)
    (weight,) = shrunk.metadata["refinement_weight"]
    assert plain.metadata["refinement_weight"] == [1.0]
    assert weight == pytest.approx(refinement_weight(plain.mean - base, plain.variance, 4), rel=1e-6)
    assert 0.0 < weight < 1.0  # a perturbed tiny network refines with a lot of spread
    np.testing.assert_allclose(shrunk.mean, base + weight * (plain.mean - base), atol=1e-5)


def test_the_papers_formulation_has_no_refinement_to_shrink():
    model, info = _tiny("qpi")
    settings = ReconstructionSettings(n_samples=2, steps=1, device="cpu", keep_samples=True)
    out = reconstruct(model, info, _qpi_stack(16, 16), settings)
    assert out.metadata["refinement_weight"] == [None]
    np.testing.assert_allclose(out.mean, out.samples.mean(0), atol=1e-5)


def test_tiled_and_untiled_agree_with_the_data_consistency_step():
    """Each tile takes the step on its own region (a per-tile operator, mirror edges), and the tiles are
    blended: with a local network, where tiles alone change nothing, the tiled result stays within a
    tenth of what the step moves."""
    model, info = _local("sr")
    image = _widefield(150, 130)
    common = dict(n_samples=2, steps=3, seed=5, device="cpu", consistency_strength=3.0)
    whole = reconstruct(model, info, image, ReconstructionSettings(tile_size=None, **common))
    tiled = reconstruct(model, info, image, ReconstructionSettings(tile_size=128, tile_overlap=64, **common))
    plain = reconstruct(model, info, image, ReconstructionSettings(tile_size=None, **{**common,
                                                                                     "consistency_strength": 0.0}))
    moved = np.sqrt(np.mean((whole.mean - plain.mean) ** 2))
    apart = np.sqrt(np.mean((tiled.mean - whole.mean) ** 2))
    assert tiled.metadata["tiles"] == [4, 4]
    assert moved > 0.1 * np.ptp(whole.mean)  # the step does something
    assert apart < 0.01 * moved


def test_a_qpi_model_has_no_data_consistency_step():
    model, info = _tiny("qpi")
    with pytest.raises(InputError, match="for SR models"):
        reconstruct(model, info, _qpi_stack(32, 32), ReconstructionSettings(n_samples=1, steps=1,
                                                                            consistency_strength=1.0))


def test_a_qpi_base_with_a_prior_adds_its_error_variance_to_the_variance(tmp_path, residual_qpi_writer):
    from napari_cvdm.checkpoint import load_model
    from napari_cvdm.physics.phase_prior import PhasePrior
    from napari_cvdm.residual import TIEBase

    base = TIEBase(1e3, 0.521, 1.0, 0.21, 1.75, "mirror", 2.0, prior=PhasePrior(3e-3, 2.9, 0.05).to_dict())
    model, info = load_model(residual_qpi_writer(tmp_path / "m.safetensors", base), "cpu")
    image = _qpi_stack(48, 48)
    common = dict(n_samples=2, steps=2, seed=1, device="cpu")
    with_base = reconstruct(model, info, image, ReconstructionSettings(**common))
    samples_only = reconstruct(model, info, image, ReconstructionSettings(**common, base_variance=False))
    added = with_base.metadata["base_error_variance"][0]
    assert samples_only.metadata["base_error_variance"] == [None] and added > 0
    assert added == pytest.approx(base.error_variance(image.astype(np.float64)), rel=1e-6)
    np.testing.assert_allclose(with_base.variance, samples_only.variance + np.float32(added), rtol=1e-6)
    np.testing.assert_array_equal(with_base.mean, samples_only.mean)
