"""calibrate_model on a tiny model, `cvdm calibrate` (new file, no silent overwrite), calibrated predict outputs."""

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_cvdm.acquisition import Acquisition
from napari_cvdm.checkpoint import ModelInfo, load_model, read_model_info, save_model
from napari_cvdm.cli import main
from napari_cvdm.data import ImagePair
from napari_cvdm.model import CVDM, ModelConfig
from napari_cvdm.engine import ReconstructionSettings
from napari_cvdm.uncertainty.apply import calibration_line, uncertainty_outputs
from napari_cvdm.uncertainty.calibrate import calibrate_model, crops, with_calibration
from napari_cvdm.uncertainty.conformal import NO_VARIANCE_MESSAGE, Calibration

FAST = ["--n-samples", "2", "--steps", "2", "--device", "cpu", "--tile-size", "0"]
SETTINGS = ReconstructionSettings(n_samples=2, steps=2, device="cpu", tile_size=None)


def _qpi_model(path):
    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=2, preset="tiny")
    info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                     sampler={"name": "dpm_solver_2m", "steps": 2, "n_samples": 2},
                     input_normalization={"mode": "mean"},
                     target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]})
    return save_model(path, CVDM(config), info)


def _qpi_pairs(count=2, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return [ImagePair(f"p{i}", (1 + 0.1 * rng.standard_normal((2, size, size))).astype(np.float32),
                      rng.random((1, size, size)).astype(np.float32)) for i in range(count)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _qpi_model(tmp_path_factory.mktemp("models") / "qpi.safetensors")


@pytest.fixture(scope="module")
def calibrated_path(model_path, tmp_path_factory):
    model, info = load_model(model_path)
    calibration = calibrate_model(model, info, _qpi_pairs(), SETTINGS, source="test pairs")
    return save_model(tmp_path_factory.mktemp("calibrated") / "qpi_cal.safetensors", model,
                      with_calibration(info, calibration))


@pytest.fixture
def pair_folders(tmp_path):
    inputs, targets = tmp_path / "inputs", tmp_path / "targets"
    inputs.mkdir()
    targets.mkdir()
    for pair in _qpi_pairs():
        tifffile.imwrite(inputs / f"{pair.name}.tif", pair.input)
        tifffile.imwrite(targets / f"{pair.name}.tif", pair.target[0])
    return inputs, targets


# ----------------------------------------------------------------------------- the core


def test_calibrate_model_fits_on_every_pair_and_records_what_it_saw(model_path):
    model, info = load_model(model_path)
    reports = []
    calibration = calibrate_model(model, info, _qpi_pairs(), SETTINGS, source="two pairs", progress=
                                  lambda done, total: reports.append((done, total)))
    assert isinstance(calibration, Calibration)
    assert calibration.n_images == 2 and calibration.n_pixels == 2 * 24 * 24
    assert reports == [(1, 2), (2, 2)]
    assert calibration.source == "two pairs" and calibration.units == "rad"
    assert calibration.distribution is not None and calibration.distribution.pixel_size_um == 0.21
    assert all(s > 0 for s in calibration.scale)
    # an untrained network's std is far too small for its error: the scale says so
    assert calibration.scale[-1] > 1


def test_the_calibration_records_its_sampler_and_makes_it_the_model_default(model_path):
    model, info = load_model(model_path)
    settings = ReconstructionSettings(n_samples=3, steps=3, log_snr_max=8.0, device="cpu", tile_size=None)
    calibration = calibrate_model(model, info, _qpi_pairs(count=1), settings)
    assert calibration.sampler["steps"] == 3 and calibration.sampler["n_samples"] == 3
    assert calibration.sampler["log_snr_range"] == [None, 8.0] and calibration.sampler["name"] == "dpm_solver_2m"
    assert "3 steps to log-SNR 8, N = 3" in calibration.describe()
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    calibrated = with_calibration(info, calibration)
    assert calibrated.sampler["steps"] == 3 and calibrated.sampler["log_snr_range"] == [None, 8.0]
    assert calibrated.sampler["n_samples"] == 2  # the sample count stays the model's
    assert info.sampler["steps"] == 2  # the original info is unchanged
    # the written file reads back with the new defaults, and a reconstruction uses them
    from napari_cvdm.engine import reconstruct

    path = save_model(model_path.parent / "defaults.safetensors", model, calibrated)
    model, loaded = load_model(path)
    result = reconstruct(model, loaded, _qpi_pairs(count=1)[0].input,
                         ReconstructionSettings(n_samples=2, device="cpu", tile_size=None))
    assert result.metadata["steps"] == 3 and result.metadata["log_snr_range"][1] == 8.0
    assert calibration.sampler_mismatch(result.metadata) is None
    other = {**result.metadata, "steps": 20}
    assert "steps 20 (calibrated at 3)" in calibration.sampler_mismatch(other)


def test_a_residual_models_calibration_records_which_mean_it_was_fitted_on(model_path, tmp_path,
                                                                          residual_qpi_writer):
    from napari_cvdm.residual import TIEBase

    model, info = load_model(residual_qpi_writer(tmp_path / "residual.safetensors",
                                                 TIEBase(10.0, 0.521, 1.0, 0.21, 1.75)))
    settings = ReconstructionSettings(n_samples=2, steps=2, device="cpu", tile_size=None)
    calibration = calibrate_model(model, info, _qpi_pairs(count=1), settings)
    assert calibration.sampler["shrink_refinement"] is True
    metadata = {"sampler": "dpm_solver_2m_sde", "steps": 2, "shrink_refinement": True}
    assert calibration.sampler_mismatch(metadata) is None
    note = calibration.sampler_mismatch({**metadata, "shrink_refinement": False})
    assert "the plain mean (calibrated on the shrunk mean)" in note
    # the paper's formulation has one mean: nothing to record
    paper, paper_info = load_model(model_path)
    assert "shrink_refinement" not in calibrate_model(paper, paper_info, _qpi_pairs(count=1), settings).sampler


def test_a_file_without_a_recorded_sampler_keeps_its_defaults(calibrated_path):
    info = read_model_info(calibrated_path)
    old = {key: value for key, value in info.calibration.items() if key != "sampler"}
    calibration = Calibration.from_dict(old)
    assert calibration.sampler == {} and calibration.sampler_mismatch({"steps": 99}) is None
    assert with_calibration(info, calibration).sampler == info.sampler
    with pytest.raises(ValueError, match="sampler"):
        Calibration.from_dict({**old, "sampler": "fast"})


def test_calibrate_model_refuses_one_sample_or_no_pairs(model_path):
    model, info = load_model(model_path)
    with pytest.raises(ValueError, match="at least 2 samples"):
        calibrate_model(model, info, _qpi_pairs(), ReconstructionSettings(n_samples=1, steps=2, device="cpu"))
    with pytest.raises(ValueError, match="No pairs"):
        calibrate_model(model, info, [], SETTINGS)


def test_crops_take_turns_over_the_pairs_and_stay_within_the_side():
    pairs = _qpi_pairs(count=2, size=40)
    chosen = crops(pairs, count=3, side=16)
    assert [c.name.split("[")[0] for c in chosen] == ["p0", "p1", "p0"]
    assert all(c.input.shape == (2, 16, 16) and c.target.shape == (1, 16, 16) for c in chosen)
    np.testing.assert_array_equal(chosen[2].input, pairs[0].input[:, :16, 16:32])
    assert [c.shape for c in crops(_qpi_pairs(size=12), side=16)] == [(12, 12), (12, 12)]


def test_uncertainty_outputs_scale_the_std_and_say_uncalibrated_or_n_1(calibrated_path, model_path):
    info = read_model_info(calibrated_path)
    calibration = Calibration.from_dict(info.calibration)
    variance = np.full((24, 24), 0.04)
    out = uncertainty_outputs(info, variance, _qpi_pairs()[0].input, n_samples=4)
    assert out.calibrated and out.level == 0.95
    np.testing.assert_allclose(out.calibrated_std, 0.2 * calibration.variance_scale, rtol=1e-5)
    np.testing.assert_allclose(out.error, 1.959964 * 0.2 * calibration.scale[calibration.level_index(0.95)],
                               rtol=1e-5)
    assert out.variance_relative_error == pytest.approx(np.sqrt(2 / 3))
    plain = uncertainty_outputs(read_model_info(model_path), variance, _qpi_pairs()[0].input, n_samples=4)
    assert not plain.calibrated and plain.calibration == "uncalibrated" and plain.error is None
    single = uncertainty_outputs(info, np.zeros((24, 24)), _qpi_pairs()[0].input, n_samples=1)
    assert single.error is None and single.variance_note == NO_VARIANCE_MESSAGE
    assert single.variance_relative_error is None


def test_a_foreign_input_gets_an_out_of_distribution_sentence(calibrated_path):
    info = read_model_info(calibrated_path)
    pair = _qpi_pairs()[0]
    model, _ = load_model(calibrated_path)
    from napari_cvdm.engine import reconstruct

    result = reconstruct(model, info, pair.input, SETTINGS)
    assert uncertainty_outputs(info, result.variance, pair.input, 2, 0.21).warning is None
    foreign = uncertainty_outputs(info, result.variance, pair.input, 2, input_pixel_size_um=0.5)
    assert "pixel size" in foreign.warning


# ----------------------------------------------------------------------------- cvdm calibrate


def test_cvdm_calibrate_writes_a_new_file_whose_calibration_round_trips(model_path, pair_folders, tmp_path, capsys):
    inputs, targets = pair_folders
    output = tmp_path / "calibrated.safetensors"
    before = model_path.read_bytes()
    assert main(["calibrate", "--model", str(model_path), "--input-dir", str(inputs), "--target-dir",
                 str(targets), "--output", str(output), *FAST]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(output) and "calibrated from 2 pair(s)" in err
    assert model_path.read_bytes() == before  # the original model is untouched
    info = read_model_info(output)
    calibration = Calibration.from_dict(info.calibration)
    assert calibration.n_images == 2 and Calibration.from_dict(calibration.to_dict()) == calibration
    load_model(output)  # the weights came along
    assert main(["info", str(output)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["calibration"]["n_images"] == 2 and calibration.describe() in err


def test_cvdm_calibrate_replaces_nothing_unasked(model_path, pair_folders, tmp_path, capsys):
    inputs, targets = pair_folders
    data = ["--input-dir", str(inputs), "--target-dir", str(targets), *FAST]
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"the user's file")
    for argv, words in (
        (["--output", str(existing)], ("already exists", "--overwrite")),
        (["--output", str(model_path)], ("--in-place",)),
        ([], ("--output", "--in-place")),
        (["--output", str(tmp_path / "m.pt")], (".safetensors",)),
        (["--output", str(tmp_path / "n.safetensors"), "--n-samples", "1"], ("at least 2",)),
    ):
        assert main(["calibrate", "--model", str(model_path), *data, *argv]) == 2
        _, err = capsys.readouterr()
        assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert existing.read_bytes() == b"the user's file"
    assert not (tmp_path / "n.safetensors").exists()
    # --in-place updates a copy of the model, and only when asked
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(model_path.read_bytes())
    assert main(["calibrate", "--model", str(copy), *data, "--in-place"]) == 0
    assert read_model_info(copy).calibration["n_images"] == 2


def test_cvdm_info_says_uncalibrated(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    _, err = capsys.readouterr()
    assert "uncalibrated" in err and "uncalibrated" in calibration_line(read_model_info(model_path))


# ----------------------------------------------------------------------------- predict


def _predict(model, image_path, out, capsys, *extra):
    assert main(["predict", str(image_path), "--model", str(model), "--out", str(out), *FAST, *extra]) == 0
    capsys.readouterr()
    return json.loads((out / "cell_cvdm.json").read_text())


def test_predict_writes_the_calibrated_tiffs_only_for_a_calibrated_model(calibrated_path, model_path, tmp_path,
                                                                         capsys):
    image = tmp_path / "cell.tif"
    tifffile.imwrite(image, _qpi_pairs()[0].input)
    sidecar = _predict(calibrated_path, image, tmp_path / "cal", capsys)
    std = tifffile.imread(tmp_path / "cal" / "cell_std_calibrated.tif")
    error = tifffile.imread(tmp_path / "cal" / "cell_error95.tif")
    variance = tifffile.imread(tmp_path / "cal" / "cell_variance.tif")
    assert std.shape == error.shape == variance.shape and np.all(error >= std)
    assert sidecar["calibrated"] is True and sidecar["uncertainty"]["level"] == 0.95
    assert sidecar["uncertainty"]["calibration"].startswith("calibrated")
    assert sidecar["uncertainty"]["variance_relative_error"] == pytest.approx(np.sqrt(2.0))
    assert set(sidecar["outputs"]) >= {"std_calibrated", "error95"}

    sidecar = _predict(model_path, image, tmp_path / "plain", capsys)
    assert sidecar["calibrated"] is False and sidecar["uncertainty"]["calibration"] == "uncalibrated"
    assert not list((tmp_path / "plain").glob("*_std_calibrated.tif"))
    assert not list((tmp_path / "plain").glob("*_error95.tif"))

    sidecar = _predict(calibrated_path, image, tmp_path / "one", capsys, "--n-samples", "1")
    assert sidecar["calibrated"] is False and not list((tmp_path / "one").glob("*_error95.tif"))
    assert sidecar["uncertainty"]["variance_note"] == NO_VARIANCE_MESSAGE


def _predict_one(calibrated_path, tmp_path, capsys, *flags) -> tuple[str, dict]:
    """``cvdm predict`` of one pair's input with ``flags``: its stderr and its sidecar."""
    image = tmp_path / "cell.tif"
    tifffile.imwrite(image, _qpi_pairs()[0].input)
    argv = ["predict", str(image), "--model", str(calibrated_path), "--out", str(tmp_path / "o"), *FAST, *flags]
    assert main(argv) == 0
    return capsys.readouterr().err, json.loads((tmp_path / "o" / "cell_cvdm.json").read_text())


def test_predict_prints_one_line_for_an_input_unlike_the_calibration_data(calibrated_path, tmp_path, capsys):
    err, sidecar = _predict_one(calibrated_path, tmp_path, capsys, "--pixel-size", "0.5")
    lines = [line for line in err.splitlines() if "unlike the 2 calibration" in line]
    assert len(lines) == 1 and lines[0].startswith("cvdm predict: warning: cell.tif:")
    assert "pixel size" in sidecar["uncertainty"]["out_of_distribution"]
    assert sidecar["uncertainty"]["sampler_note"] is None  # FAST samples as the calibration did


def test_predict_says_when_it_samples_unlike_the_calibration(calibrated_path, tmp_path, capsys):
    err, sidecar = _predict_one(calibrated_path, tmp_path, capsys, "--steps", "3")
    lines = [line for line in err.splitlines() if "calibrated at 2" in line]
    assert len(lines) == 1 and "steps 3" in lines[0], err
    assert "steps 3 (calibrated at 2)" in sidecar["uncertainty"]["sampler_note"]


# ----------------------------------------------------------------------------- end of training


def test_training_calibrates_the_exported_model_on_its_validation_crops(tmp_path):
    from napari_cvdm.train import TrainConfig, train

    settings = dict(task="sr", preset="tiny", patch_size=16, batch_size=2, steps=2, warmup_steps=0,
                    simulated_images=4, simulated_size=32, validation_fraction=0.25, validate_every=0,
                    validation_patches=2, validation_samples=2, validation_sample_steps=2, checkpoint_every=0,
                    sample_steps=4, n_samples=3, device="cpu")
    result = train(TrainConfig(**settings, output=str(tmp_path / "on.safetensors")))
    calibration = Calibration.from_dict(read_model_info(result.model_path).calibration)
    assert calibration.n_images == 1 and calibration.n_pixels == 32 * 32  # one validation image, whole
    assert "validation crop" in calibration.source and calibration.distribution.pixel_size_um > 0
    load_model(result.model_path)
    result = train(TrainConfig(**settings, output=str(tmp_path / "off.safetensors"), calibrate=False))
    assert read_model_info(result.model_path).calibration == {}


def test_predict_writes_a_data_consistency_map_with_its_metadata(model_path, tmp_path, capsys):
    from napari_cvdm.consistency import consistency_output
    from napari_cvdm.data.simulate import simulate_qpi

    image = tmp_path / "cell.tif"
    tifffile.imwrite(image, _qpi_pairs()[0].input)
    sidecar = _predict(model_path, image, tmp_path / "out", capsys)
    values = tifffile.imread(tmp_path / "out" / "cell_consistency.tif")
    assert values.shape == (24, 24) and np.all(values >= 0)
    fields = sidecar["consistency"]
    assert sidecar["outputs"]["consistency"] == "cell_consistency.tif"
    assert fields["units"] == "input noise std" and fields["optics"] == {"wavelength_um": 0.521, "dz_um": 1.0}
    assert fields["rms"] == pytest.approx(float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), rel=1e-5)
    # The true phase explains its own stack (≈ 1 noise std); a shifted one does not.
    sample = simulate_qpi(np.random.default_rng(0), 64, noise_std=0.05)
    info = read_model_info(model_path)
    right = consistency_output(info, sample.phase, sample.stack, Acquisition(pixel_size_um=0.21))
    wrong = consistency_output(info, np.roll(sample.phase, 2, axis=1), sample.stack, Acquisition(pixel_size_um=0.21))
    assert right.summary["rms"] == pytest.approx(1.0, abs=0.15) and wrong.summary["rms"] > 3
    assert "not_computed" in consistency_output(info, sample.phase[:8], sample.stack, Acquisition(pixel_size_um=0.21)).summary


def test_cvdm_calibrate_refits_a_qpi_base_first_only_when_asked_and_only_for_one(model_path, pair_folders,
                                                                                   tmp_path, capsys,
                                                                                   residual_qpi_writer):
    from napari_cvdm.residual import TIEBase
    from napari_cvdm.data.simulate import phase_object_stack

    mistuned = TIEBase(1e6, 0.521, 1.0, 0.21, 1.75, "mirror", 2.0, kind="fft_tie")
    residual = residual_qpi_writer(tmp_path / "residual.safetensors", mistuned)
    rng = np.random.default_rng(1)
    inputs, targets = tmp_path / "phase_in", tmp_path / "phase_out"
    inputs.mkdir(), targets.mkdir()
    yy, xx = np.mgrid[:32, :32] / 32
    for i in range(3):
        phase = 3.5 * np.exp(-((yy - rng.uniform(0.3, 0.7)) ** 2 + (xx - rng.uniform(0.3, 0.7)) ** 2) / 0.03)
        stack = phase_object_stack(phase, 1.0, 0.521, 0.21) + rng.normal(0.0, 0.05, (2, 32, 32))
        tifffile.imwrite(inputs / f"c{i}.tif", stack.astype(np.float32))
        tifffile.imwrite(targets / f"c{i}.tif", phase.astype(np.float32))
    output = tmp_path / "refitted.safetensors"
    assert main(["calibrate", "--model", str(residual), "--input-dir", str(inputs), "--target-dir", str(targets),
                 "--output", str(output), "--refit-base", *FAST]) == 0
    err = capsys.readouterr().err
    assert "TIE base refitted on 3 pair(s)" in err
    refitted = read_model_info(output)
    assert TIEBase.from_dict(refitted.base).strength != mistuned.strength
    assert "refitted" in Calibration.from_dict(refitted.calibration).source
    assert read_model_info(residual).base == mistuned.to_dict()  # the original model is untouched
    # a model without a TIE base is refused in one line, before anything is computed or written
    inputs, targets = pair_folders
    assert main(["calibrate", "--model", str(model_path), "--input-dir", str(inputs), "--target-dir", str(targets),
                 "--output", str(tmp_path / "no.safetensors"), "--refit-base", *FAST]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--refit-base" in err
    assert not (tmp_path / "no.safetensors").exists()
