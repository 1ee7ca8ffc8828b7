"""One class per residual base kind (``ModelConfig.base``): what it adds to the condition, and b + s·r.

The residual formulation (:mod:`napari_cvdm.model.cvdm`) samples r = (x0 − b)/s and returns
x̂ = b + s·r̂. Each kind builds b its own way; its class says, for a training pair and for a whole
plane at reconstruction time, what the model's input and condition hold, how many progress steps
the base costs per plane, and composes the output. :func:`base_for` picks the class of a model.

Arrays are ``(C, H, W)`` float32 on the output grid; "normalised" means the task's target
normalisation (QPI phase: a fixed rad range mapped to [−1, 1]). Nothing else in the package
asks which kind a model has: it asks the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np
import torch

from ..model.cvdm import BASE_LAYOUTS, BaseLayout, ModelConfig, compose_residual
from .tie_base import TIEBase, noise_level_map, optics_mismatch

if TYPE_CHECKING:
    from ..checkpoint import ModelInfo

#: r = (x0 − P(y)) / s for a predictor base: the normalised SR targets span about ±1 and a
#: trained predictor's error is a few tenths, so r is about unit size.
PREDICTOR_RESIDUAL_SCALE = 0.25

#: ``normalize(stack, target) → (y, x0)``: a training pair in normalised units.
PairNormalizer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class WholePlane(NamedTuple):
    """One input plane before tiling, as a base sees it.

    ``stack``: raw input ``(Cy, H, W)`` float32 on the output grid; ``y``: the same normalised,
    ``(1, Cy, H, W)`` on the CPU; ``normalize_target``: target units → normalised; ``predict``: the
    base network on a whole normalised model input ``(1, input_channels, H, W)`` (run in blended
    tiles, one progress step each) → b ``(Cx, H, W)``; ``tick()`` after each whole-plane stage;
    ``beat()`` between the stages of an iterative TIE solve (no step done).
    """

    stack: np.ndarray
    y: torch.Tensor
    normalize_target: Callable[[np.ndarray], np.ndarray]
    predict: Callable[[torch.Tensor], np.ndarray]
    tick: Callable[[], None] | None = None
    beat: Callable[[], None] | None = None


class ResidualBase:
    """A base kind of :data:`~napari_cvdm.model.cvdm.BASES`, for the model ``config``.

    Subclasses set ``kind``; what the kind adds to the network comes from the model's
    :data:`~napari_cvdm.model.cvdm.BASE_LAYOUTS`, so the classes and the network agree.
    """

    kind: ClassVar[str]

    def __init__(self, config: ModelConfig):
        self.config = config

    @property
    def layout(self) -> BaseLayout:
        """What this kind adds to the network (channels, P)."""
        return BASE_LAYOUTS[self.kind]

    @property
    def has_base(self) -> bool:
        """Whether the model refines a base b (the residual formulation)."""
        return self.layout.residual

    @property
    def has_network(self) -> bool:
        """Whether a jointly trained U-Net P (``CVDM.base_net``) computes b or part of it."""
        return self.layout.predictor

    @property
    def needs_tie(self) -> bool:
        """Whether b starts from a TIE phase of the input stack (a TIE base and the optics)."""
        return self.layout.outside

    @property
    def corrects_tie(self) -> bool:
        """Whether P corrects the TIE phase: b = b_TIE + s·P([y, b_TIE, ν])."""
        return self.needs_tie and self.has_network

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: y, then b_TIE and ν where the kind has them."""
        return self.config.input_channels

    @property
    def condition_channels(self) -> int:
        """Channels of the condition c = [y, b] (y alone without a base)."""
        return self.config.condition_channels

    @property
    def scale(self) -> float:
        """s of r = (x0 − b)/s: the model's ``residual_scale``, 1 without a base."""
        return float(self.config.residual_scale) if self.has_base else 1.0

    def compose(self, base, residual):
        """``b + s·r`` in normalised target units (r itself without a base: ``base`` None)."""
        return compose_residual(base, residual, self.scale)

    def tie(self, info: ModelInfo) -> TIEBase | None:
        """The TIE base a model file stores for this kind (None: the kind has none, or the file)."""
        return None

    def plane_optics(self, info: ModelInfo, pixel_um: float | None, wavelength_um: float | None,
                     dz_um: float | None) -> tuple[dict, str | None]:
        """``(optics, warning)``: what :meth:`plane_condition` passes to the TIE solve (µm, None =
        the model's) and a sentence when they differ from the training optics (None if not)."""
        return {}, None

    def training_pair(self, stack: np.ndarray, target: np.ndarray, tie: TIEBase | None,
                      normalize: PairNormalizer, normalize_target) -> tuple[np.ndarray, np.ndarray]:
        """``(model input, x0)`` normalised, of one raw training pair ``stack`` ``(Cy, H, W)``,
        ``target`` ``(Cx, H, W)``; ``tie``: the run's TIE base where :attr:`needs_tie`."""
        return normalize(stack, target)

    def fitted_scale(self, pairs: list) -> float:
        """s for a new model trained on ``pairs`` (``.input``, ``.target`` as :meth:`training_pair`
        gives them), so that r = (x0 − b)/s is about unit size; 1 without a base."""
        return 1.0

    def plane_condition(self, info: ModelInfo, plane: WholePlane,
                        optics: dict) -> tuple[torch.Tensor, np.ndarray | None]:
        """``(c, b)`` of a whole plane: the condition ``(1, condition_channels, H, W)`` and the base
        ``(Cx, H, W)`` in normalised target units (None without a base)."""
        return plane.y, None

    def plane_steps(self, predictor_tiles: int) -> int:
        """Progress steps the base takes per plane, when P runs on ``predictor_tiles`` tiles."""
        return 0

    def error_variance(self, info: ModelInfo, stack: np.ndarray, optics: dict) -> float | None:
        """The base's closed-form error variance (target unit², per pixel) on a raw plane, where the kind
        has one (a TIE base with a phase prior); None otherwise."""
        return None

    def words(self, info: ModelInfo) -> str:
        """What the reconstruction is built from, in a few words (model card, info)."""
        return "paper (CVDM on the image itself)"

    @staticmethod
    def _with_base(y: torch.Tensor, base: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The condition ``[y, b]`` and the base ``b`` beside it."""
        return torch.cat([y, torch.from_numpy(base)[None]], dim=1), base


class NoBase(ResidualBase):
    """The paper's formulation: no base, the model samples x0 itself. ``x̂ = r̂``, ``c = y``."""

    kind = "none"


class PredictorBase(ResidualBase):
    """A jointly trained direct predictor (SR): ``b = P(y)``, ``c = [y, b]``, ``x̂ = b + s·r̂``.

    P is trained with ``L_base = (P(y) − x0)²``, so b estimates the posterior mean E[x0 | y].
    """

    kind = "predictor"

    def plane_condition(self, info: ModelInfo, plane: WholePlane,
                        optics: dict) -> tuple[torch.Tensor, np.ndarray | None]:
        return self._with_base(plane.y, plane.predict(plane.y))

    def fitted_scale(self, pairs: list) -> float:
        return PREDICTOR_RESIDUAL_SCALE

    def plane_steps(self, predictor_tiles: int) -> int:
        return predictor_tiles

    def words(self, info: ModelInfo) -> str:
        return "residual — refines a jointly trained direct (L2) prediction"


class TIEPhaseBase(ResidualBase):
    """The TIE phase of the whole stack (QPI): ``b = b_TIE(I₋, I₊)`` normalised like the target,
    ``c = [y, b]``, ``x̂ = b + s·r̂``. One TIE solve per plane, with the input's optics.

    Training targets are shifted to b_TIE's mean phase per image (a TIE fixes the phase only up
    to a constant), so the residual carries no arbitrary offset.
    """

    kind = "physics"
    #: how the model file describes the P on top of the phase (model card)
    correction_words: ClassVar[str] = ""

    def tie(self, info: ModelInfo) -> TIEBase | None:
        return TIEBase.from_dict(info.base) if info.base else None

    def plane_optics(self, info: ModelInfo, pixel_um: float | None, wavelength_um: float | None,
                     dz_um: float | None) -> tuple[dict, str | None]:
        mismatch = optics_mismatch(TIEBase.from_dict(info.base), wavelength_um, dz_um)
        return {"wavelength_um": wavelength_um, "dz_um": dz_um, "pixel_um": pixel_um}, mismatch

    def tie_channels(self, tie: TIEBase, stack: np.ndarray, normalize_target, optics: dict | None = None,
                     beat: Callable[[], None] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(phase, channels)``: the TIE phase ``(H, W)`` in rad of ``stack`` ``(2, H, W)`` and what
        follows y in the model's input: ``[b_TIE normalised (1, H, W)]`` (plus ν when corrected)."""
        phase = tie.phase(stack, heartbeat=beat, **(optics or {}))
        return phase, [normalize_target(phase[None])]

    def training_pair(self, stack: np.ndarray, target: np.ndarray, tie: TIEBase | None,
                      normalize: PairNormalizer, normalize_target) -> tuple[np.ndarray, np.ndarray]:
        phase, channels = self.tie_channels(tie, stack, normalize_target)
        y, x0 = normalize(stack, target - target.mean() + phase.mean())
        return np.concatenate([y, *channels]), x0

    def plane_condition(self, info: ModelInfo, plane: WholePlane,
                        optics: dict) -> tuple[torch.Tensor, np.ndarray | None]:
        _, channels = self.tie_channels(TIEBase.from_dict(info.base), plane.stack, plane.normalize_target,
                                        optics, plane.beat)
        if plane.tick is not None:
            plane.tick()
        return self._with_base(plane.y, self._from_tie(plane, channels))

    def error_variance(self, info: ModelInfo, stack: np.ndarray, optics: dict) -> float | None:
        """The TIE phase's error variance (:meth:`TIEBase.error_variance`, rad²). A corrected base's P
        is trained on the TIE's systematic error; the noise-driven large scales it cannot see are this."""
        return TIEBase.from_dict(info.base).error_variance(np.asarray(stack, np.float64), **optics)

    def fitted_scale(self, pairs: list) -> float:
        """Twice the RMS of x0 − b_TIE over the pairs (3 significant digits)."""
        base = slice(self.config.y_channels, self.config.y_channels + self.config.x_channels)  # ν may follow
        squares = [float(np.mean((p.target - p.input[base]) ** 2)) for p in pairs]
        return float(f"{2.0 * math.sqrt(np.mean(squares)):.3g}")

    def _from_tie(self, plane: WholePlane, channels: list[np.ndarray]) -> np.ndarray:
        """b ``(Cx, H, W)`` from the TIE channels of :meth:`tie_channels`: b_TIE itself."""
        return channels[0]

    def plane_steps(self, predictor_tiles: int) -> int:
        return 1

    def words(self, info: ModelInfo) -> str:
        tie = info.base or {}
        if not tie:
            return f"residual — refines a physics base{self.correction_words}"
        solver = {"us_tie": "US-TIE", "fft_tie": "FFT-TIE"}.get(tie.get("kind", "fft_tie"), "TIE")
        boundary = tie.get("boundary", "?")
        return (f"residual — refines the {solver} phase ({boundary} boundary) of the whole image"
                f"{self.correction_words}")


class CorrectedTIEBase(TIEPhaseBase):
    """The TIE phase corrected by a jointly trained P (QPI):
    ``b = b_TIE + s·P([y, b_TIE, ν])``, ``c = [y, b]``, ``x̂ = b + s·r̂``.

    ν (:func:`~napari_cvdm.residual.tie_base.noise_level_map`) is a constant map of the stack's
    noise level σ̂, which also sets the TIE regulariser (σ̂ is estimated once, for both); only P
    sees it. P trains with ``L_base = (b − x0)²``; its zero-initialised output layer makes a
    physics model fine-tuned into this kind start as the physics model.
    """

    kind = "physics_predictor"
    correction_words = (" corrected by a jointly trained direct (L2) prediction that reads the stack's "
                        "noise level")

    def tie_channels(self, tie: TIEBase, stack: np.ndarray, normalize_target, optics: dict | None = None,
                     beat: Callable[[], None] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        from ..physics.noise import defocus_relative_noise_std

        noise_std = defocus_relative_noise_std(stack)  # once, for the TIE regulariser and for ν
        phase = tie.phase(stack, heartbeat=beat, noise_std=noise_std, **(optics or {}))
        return phase, [normalize_target(phase[None]), noise_level_map(noise_std, stack.shape)]

    def _from_tie(self, plane: WholePlane, channels: list[np.ndarray]) -> np.ndarray:
        model_input = torch.cat([plane.y, *(torch.from_numpy(channel)[None] for channel in channels)], dim=1)
        return plane.predict(model_input)

    def plane_steps(self, predictor_tiles: int) -> int:
        return 1 + predictor_tiles


#: The class of each ``ModelConfig.base``.
BASE_CLASSES: dict[str, type[ResidualBase]] = {
    cls.kind: cls for cls in (NoBase, TIEPhaseBase, PredictorBase, CorrectedTIEBase)
}


def base_for(config: ModelConfig) -> ResidualBase:
    """The base of a model of ``config`` (its ``base`` kind)."""
    return BASE_CLASSES[config.base](config)


def training_base(formulation: str, task: str, correct: bool, x_channels: int, y_channels: int,
                  fine_tuned: ModelConfig | None = None) -> ResidualBase:
    """The base a training run trains, before its model exists (``residual_scale`` not yet known).

    A fine-tuned model keeps its kind, a TIE base gaining P when ``correct``; a new model has none
    in the ``paper`` formulation, a TIE base for ``qpi`` (corrected when ``correct``), else a predictor.
    """
    if fine_tuned is not None:
        kind = fine_tuned.base
        if correct and kind == TIEPhaseBase.kind:
            kind = CorrectedTIEBase.kind
    elif formulation != "residual":
        kind = NoBase.kind
    elif task == "qpi":
        kind = CorrectedTIEBase.kind if correct else TIEPhaseBase.kind
    else:
        kind = PredictorBase.kind
    return base_for(ModelConfig(x_channels=x_channels, y_channels=y_channels, base=kind))


def tie_of(info: ModelInfo) -> TIEBase | None:
    """The TIE base a model (its ``ModelInfo``) refines, None when it has none to refit."""
    return base_for(info.config).tie(info)


def formulation_words(info: ModelInfo) -> str:
    """What a model's (its ``ModelInfo``) reconstruction is built from, in a few words."""
    return base_for(info.config).words(info)
