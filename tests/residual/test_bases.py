"""The base kinds of the residual formulation: channels, b + s·r, and conditions that agree."""

import numpy as np
import pytest
import torch

from napari_cvdm.checkpoint import ModelInfo
from napari_cvdm.data.normalize import Normalizer
from napari_cvdm.model import BASES, CVDM, ModelConfig
from napari_cvdm.residual import (
    BASE_CLASSES, CorrectedTIEBase, NoBase, PredictorBase, TIEBase, TIEPhaseBase, WholePlane, base_for, tie_of,
    training_base,
)

TIE = TIEBase(strength=12.0, wavelength_um=0.521, dz_um=1.0, pixel_um=0.21, offset_rad=1.75)
#: (y channels, input channels, condition channels, has P, needs TIE, corrects TIE, steps for 4 P tiles)
CHANNELS = {
    "none": (1, 1, 1, False, False, False, 0),
    "predictor": (1, 1, 2, True, False, False, 4),
    "physics": (2, 3, 3, False, True, False, 1),
    "physics_predictor": (2, 4, 3, True, True, True, 5),
}


def _model(kind: str) -> CVDM:
    """A tiny model of ``kind`` with its weights moved off the zero initialisation (P's output too)."""
    torch.manual_seed(0)
    model = CVDM(ModelConfig(y_channels=CHANNELS[kind][0], preset="tiny", base=kind, residual_scale=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_every_kind_has_a_class_and_its_channels_match_the_network():
    assert set(BASE_CLASSES) == set(BASES)
    for kind, (y, inputs, condition, network, tie, corrects, steps) in CHANNELS.items():
        model = _model(kind)
        base = base_for(model.config)
        assert base.kind == kind and type(base) is BASE_CLASSES[kind]
        assert (base.input_channels, base.condition_channels) == (inputs, condition)
        assert (base.has_network, base.needs_tie, base.corrects_tie) == (network, tie, corrects)
        assert (model.base_net is not None) == network and base.has_base == (kind != "none")
        assert base.plane_steps(4) == steps


def test_a_new_model_fits_its_residual_scale_to_its_base():
    class Pair:
        input = np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.full((4, 4), 0.3)])  # [y, b_TIE, ν]
        target = np.full((1, 4, 4), 1.5)

    assert base_for(ModelConfig()).fitted_scale([Pair]) == 1.0
    assert base_for(ModelConfig(base="predictor")).fitted_scale([Pair]) == 0.25
    for kind in ("physics", "physics_predictor"):
        assert base_for(ModelConfig(y_channels=1, base=kind)).fitted_scale([Pair]) == 1.0  # 2 · RMS(0.5)


def test_the_output_is_b_plus_s_r_in_one_place():
    b, r = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for kind in ("predictor", "physics", "physics_predictor"):
        model = _model(kind)
        assert base_for(model.config).scale == 0.5
        assert torch.equal(base_for(model.config).compose(b, r), b + 0.5 * r)
        assert torch.equal(model.to_output(r, b), b + 0.5 * r)
    none = base_for(_model("none").config)
    assert none.scale == 1.0 and none.compose(None, r) is r and _model("none").to_output(r, None) is r
    assert np.array_equal(base_for(_model("physics").config).compose(b.numpy(), r.numpy()), (b + 0.5 * r).numpy())


def _pair(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    target = (1.75 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0))[None].astype(np.float32)
    if CHANNELS[kind][0] == 1:
        return (1.0 + target + 0.05 * rng.standard_normal(target.shape)).astype(np.float32), target
    stack = np.concatenate([1.0 + 0.1 * target, 1.0 - 0.1 * target]) + 0.01 * rng.standard_normal((2, 32, 32))
    return stack.astype(np.float32), target


@pytest.mark.parametrize("kind", list(CHANNELS))
def test_a_training_pair_and_the_whole_plane_give_the_same_condition(kind):
    """The model's condition of a training pair's input equals the condition reconstruction builds for
    the same stack on the whole plane (P on a plane this small runs whole)."""
    model = _model(kind)
    base = base_for(model.config)
    stack, target = _pair(kind)
    inputs, targets = Normalizer.fixed(0.0, 3.5), Normalizer.fixed(0.0, 3.5)
    info = ModelInfo(task="qpi" if base.needs_tie else "sr", config=model.config,
                     base=TIE.to_dict() if base.needs_tie else {})
    model_input, x0 = base.training_pair(stack, target, tie_of(info),
                                         lambda s, t: (inputs.normalize(s), targets.normalize(t)), targets.normalize)
    assert model_input.shape == (base.input_channels, 32, 32) and x0.shape == target.shape
    with torch.no_grad():
        trained, _ = model.condition(torch.from_numpy(model_input)[None])
        plane = WholePlane(stack, torch.from_numpy(inputs.normalize(stack))[None], targets.normalize,
                           lambda x: model.condition(x)[1][0].numpy())
        c, b = base.plane_condition(info, plane, {})
    assert c.shape == trained.shape == (1, base.condition_channels, 32, 32)
    assert torch.allclose(c, trained, atol=1e-6)
    assert (b is None) == (kind == "none")


def test_a_training_run_trains_the_kind_its_settings_ask_for():
    def kind(*args, fine_tuned=None):
        return training_base(*args, 1, 2, fine_tuned=fine_tuned).kind

    assert kind("paper", "qpi", False) == NoBase.kind
    assert kind("residual", "qpi", False) == TIEPhaseBase.kind
    assert kind("residual", "qpi", True) == CorrectedTIEBase.kind
    assert kind("residual", "sr", False) == PredictorBase.kind
    physics = ModelConfig(y_channels=2, base="physics")
    assert kind("residual", "qpi", True, fine_tuned=physics) == CorrectedTIEBase.kind
    assert kind("residual", "qpi", False, fine_tuned=physics) == TIEPhaseBase.kind
