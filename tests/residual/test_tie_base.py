import numpy as np
import pytest

from napari_cvdm.data.simulate import phase_object_stack
from napari_cvdm.physics.optics import apply_transfer, frequency_grid
from napari_cvdm.physics.noise import defocus_relative_noise_std
from napari_cvdm.residual import formulation_words
from napari_cvdm.residual.tie_base import KINDS, TIEBase, noise_level_map

WAVELENGTH_UM, PIXEL_UM, DZ_UM = 0.521, 0.21, 1.0
N = 64


def strong_phase_pairs(seed, count=3, range_rad=3.5):
    """Smooth phase objects as strong as the simulator's (3.5 rad), where the linear TIE errs."""
    rng = np.random.default_rng(seed)
    fy, fx = frequency_grid((N, N), PIXEL_UM)
    pairs = []
    for _ in range(count):
        field = apply_transfer(rng.normal(size=(N, N)), np.exp(-((fx**2 + fy**2) / 0.3**2)))
        phase = range_rad * (field - field.min()) / np.ptp(field)
        pairs.append((phase_object_stack(phase, DZ_UM, WAVELENGTH_UM, PIXEL_UM), phase))
    return [s for s, _ in pairs], [p for _, p in pairs]


def test_the_fit_keeps_the_solver_with_the_lower_error_on_the_pairs():
    stacks, phases = strong_phase_pairs(0)
    fits = {kind: TIEBase.fit(stacks, phases, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, kind=kind)[0] for kind in KINDS}
    assert fits["us_tie"].kind == "us_tie" and fits["fft_tie"].kind == "fft_tie"
    # US-TIE keeps FFT-TIE's exponent and boundary and rescales its strength
    assert (fits["us_tie"].exponent, fits["us_tie"].boundary) == (fits["fft_tie"].exponent, fits["fft_tie"].boundary)
    errors = {kind: base.mean_log_error(stacks, phases) for kind, base in fits.items()}
    chosen, _ = TIEBase.fit(stacks, phases, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75)
    assert chosen == fits[min(errors, key=errors.get)]
    # on smooth, noise-free objects the linear TIE is the better one (measured: 0.0041 vs 0.0082 rad)
    assert chosen.kind == "fft_tie"


def test_a_base_round_trips_with_its_solver_and_old_files_mean_fft_tie():
    base = TIEBase(12.0, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, "mirror", 4.0, kind="us_tie")
    assert TIEBase.from_dict(base.to_dict()) == base
    old = {k: v for k, v in base.to_dict().items() if k != "kind"}
    assert TIEBase.from_dict(old).kind == "fft_tie"
    stack, _ = strong_phase_pairs(2, count=1)
    phase = base.phase(stack[0])
    assert phase.shape == (N, N) and phase.dtype == np.float32
    assert phase.mean() == pytest.approx(1.75, abs=1e-5)


def test_an_unknown_solver_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown base kind 'gs_tie'"):
        TIEBase(12.0, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, kind="gs_tie")
    with pytest.raises(ValueError, match="unknown base kind 'gs_tie'"):
        TIEBase.fit(*strong_phase_pairs(3, count=1), WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, kind="gs_tie")
    assert set(KINDS) == {"fft_tie", "us_tie"}


def test_the_formulation_names_the_solver_and_a_base_correction():
    from napari_cvdm.model import ModelConfig

    class Info:
        config = ModelConfig(y_channels=2, base="physics")
        base = {"kind": "us_tie", "boundary": "periodic"}

    assert formulation_words(Info).endswith("refines the US-TIE phase (periodic boundary) of the whole image")
    Info.base = {"boundary": "mirror"}
    assert "refines the FFT-TIE phase (mirror boundary)" in formulation_words(Info)
    Info.config = ModelConfig(y_channels=2, base="physics_predictor")
    assert formulation_words(Info).endswith("(mirror boundary) of the whole image corrected by a jointly "
                                            "trained direct (L2) prediction that reads the stack's noise level")


def test_a_refit_fixes_a_mistuned_regulariser_and_keeps_the_solver_and_optics():
    stacks, phases = strong_phase_pairs(4)
    rng = np.random.default_rng(4)
    noisy = [stack + rng.normal(0.0, 0.05, stack.shape) for stack in stacks]
    mistuned = TIEBase(1e6, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, "mirror", 2.0, kind="us_tie")
    refitted, before, after = mistuned.refit(noisy, phases)
    assert after < 0.8 * before and after == pytest.approx(np.mean(refitted.errors(noisy, phases)))
    assert (refitted.kind, refitted.offset_rad, refitted.wavelength_um, refitted.dz_um, refitted.pixel_um) == \
        ("us_tie", 1.75, WAVELENGTH_UM, DZ_UM, PIXEL_UM)
    # a base the search cannot beat is kept as it is
    again, before_again, after_again = refitted.refit(noisy, phases)
    assert again == refitted and after_again == before_again


def test_the_noise_level_map_is_constant_and_reads_log10_of_the_stack_noise_plus_2():
    rng = np.random.default_rng(3)
    flat = np.ones((2, 64, 48))
    clean = noise_level_map(defocus_relative_noise_std(flat), flat.shape)
    assert clean.shape == (1, 64, 48) and clean.dtype == np.float32 and np.ptp(clean) == 0
    assert float(clean[0, 0, 0]) == pytest.approx(np.log10(0.005) + 2, abs=1e-6)  # the noise floor
    noisy_stack = flat + rng.normal(0, 0.1, flat.shape)
    noisy = noise_level_map(defocus_relative_noise_std(noisy_stack), noisy_stack.shape)
    # σ̂ is within 15 % of the true std (physics/noise.defocus_relative_noise_std), so ν within 0.07 of 1
    assert float(noisy[0, 0, 0]) == pytest.approx(1.0, abs=0.07)


def test_a_fitted_base_keeps_the_phases_prior_and_its_error_variance_grows_with_the_noise():
    stacks, phases = strong_phase_pairs(4)
    base, _ = TIEBase.fit(stacks, phases, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, kind="fft_tie")
    assert base.prior is not None and TIEBase.from_dict(base.to_dict()) == base
    assert TIEBase(12.0, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75).error_variance(stacks[0]) is None
    rng = np.random.default_rng(0)
    variances = [base.error_variance(stacks[0] + rng.normal(0, noise, stacks[0].shape)) for noise in (0.02, 0.1)]
    assert 0 < variances[0] < variances[1]
    # a refit of a base without a prior gains one; a broken prior is refused by name
    assert TIEBase(12.0, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75).refit(stacks, phases)[0].prior is not None
    with pytest.raises(ValueError, match="exponent"):
        TIEBase(12.0, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 1.75, prior={"amplitude": 1.0, "corner": 0.1})


def test_the_error_variance_predicts_a_linear_tie_s_error_on_phases_drawn_from_the_prior():
    from napari_cvdm.physics.phase_prior import PhasePrior, draw_phase

    prior = PhasePrior(1e-4, 3.0, 0.05)  # weak phases (about 0.2 rad): the linear TIE holds
    base = TIEBase(1e3, WAVELENGTH_UM, DZ_UM, PIXEL_UM, 0.0, "periodic", 2.0, prior=prior.to_dict())
    rng = np.random.default_rng(1)
    predicted, measured = [], []
    for _ in range(24):
        phase = draw_phase(prior, (N, N), PIXEL_UM, rng)
        stack = phase_object_stack(phase, DZ_UM, WAVELENGTH_UM, PIXEL_UM) + rng.normal(0, 0.05, (2, N, N))
        error = base.phase(stack) - phase
        measured.append(np.var(error))
        predicted.append(base.error_variance(stack, noise_std=0.05))
    assert 0.7 < np.mean(measured) / np.mean(predicted) < 1.4
