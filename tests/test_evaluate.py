"""``evaluate``'s simulated test data: unseen by default, and the table says which data it scored."""

import numpy as np
import pytest

from napari_cvdm.errors import InputError
from napari_cvdm.evaluate import EvaluationOptions, evaluate, write_tables


def _photos(folder, n=30):
    from skimage.io import imsave

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        imsave(folder / f"photo_{i:02d}.png", (rng.random((24, 24)) * 255).astype(np.uint8), check_contrast=False)
    return folder


def test_qpi_evaluation_uses_the_test_photos_and_says_it_is_unseen(tmp_path):
    from napari_cvdm.data import split_source_files

    folder = _photos(tmp_path / "photos")
    options = EvaluationOptions(simulate="qpi", images=2, size=32, source_images=str(folder))
    table = evaluate(options)
    test = {p.name for p in split_source_files(folder)["test"]}
    assert {row["image"].split("-", 4)[-1] for row in table.rows} <= test
    assert table.data.startswith("unseen QPI test set")
    markdown, _, _ = write_tables(table, tmp_path / "out")
    assert markdown.read_text().startswith("Test data: unseen QPI test set")


def test_without_photos_the_qpi_table_says_it_is_not_unseen_and_sr_defaults_to_the_unseen_settings():
    qpi = evaluate(EvaluationOptions(simulate="qpi", images=1, size=32))
    assert "NOT unseen" in qpi.data and "--source-images" in qpi.data
    sr = evaluate(EvaluationOptions(simulate="sr", images=6, size=32))
    assert sr.data.startswith("unseen SR test set")
    assert {row["image"].rsplit("-", 1)[-1] for row in sr.rows} >= {"nucleus", "mitochondria"}
    seen = evaluate(EvaluationOptions(simulate="sr", images=1, size=32, test_set="seen"))
    assert "NOT unseen" in seen.data


def test_bad_source_images_are_a_readable_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        evaluate(EvaluationOptions(simulate="qpi", images=1, size=32, source_images=str(tmp_path / "missing")))
    with pytest.raises(InputError, match="QPI"):
        evaluate(EvaluationOptions(simulate="sr", images=1, size=32, source_images=str(tmp_path)))


def test_calibrated_rows_recover_nominal_coverage_of_a_miscalibrated_std():
    from napari_cvdm.uncertainty.conformal import fit_calibration
    from napari_cvdm.evaluate import _calibrated_scores, _scores

    rng = np.random.default_rng(0)
    std = rng.uniform(0.05, 0.2, (2, 64, 64))
    target = rng.random((2, 64, 64))
    mean = target + 2.0 * std * rng.standard_normal(std.shape)  # errors twice the std
    calibration = fit_calibration(list(mean), list(std), list(target))
    raw = _scores(mean[1], target[1], "qpi", std[1], None)
    calibrated = _calibrated_scores(mean[1], std[1], target[1], "qpi", calibration)
    assert raw["coverage_95"] < 0.7
    for level in (80, 90, 95):
        assert calibrated[f"coverage_{level}"] == pytest.approx(level / 100, abs=0.03)
    assert calibrated["uce"] < 0.5 * raw["uce"]
    assert calibrated["spearman_std_error"] == pytest.approx(raw["spearman_std_error"])  # one scale: same ranks


def test_self_consistency_row_of_a_perfect_sampler_sits_at_the_finite_n_ceiling():
    from napari_cvdm.evaluate import _ceiling_scores

    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, (48, 48))
    samples = scale * rng.standard_normal((8, 48, 48))
    row = _ceiling_scores(samples.mean(axis=0), samples, rng.random((48, 48)), "qpi")
    assert row["coverage_95"] == pytest.approx(0.884, abs=0.015)  # P(|T₆| ≤ 1.96/sqrt(8/7)), see uncertainty/metrics.py
    assert set(row) >= {"coverage_80", "uce", "ence", "ause", "spearman_std_error"}


def test_a_calibrated_model_gets_calibrated_and_ceiling_rows(tmp_path):
    import tifffile
    import torch

    from napari_cvdm.uncertainty.calibrate import calibrate_model, with_calibration
    from napari_cvdm.checkpoint import ModelInfo, save_model
    from napari_cvdm.data import ImagePair
    from napari_cvdm.model import CVDM, ModelConfig
    from napari_cvdm.engine import ReconstructionSettings

    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=2, preset="tiny")
    info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                     input_normalization={"mode": "mean"},
                     target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]})
    model = CVDM(config)
    rng = np.random.default_rng(0)
    pairs = [ImagePair(f"p{i}", (1 + 0.1 * rng.standard_normal((2, 24, 24))).astype(np.float32),
                       rng.random((1, 24, 24)).astype(np.float32)) for i in range(2)]
    settings = ReconstructionSettings(n_samples=3, steps=2, device="cpu", tile_size=None)
    path = save_model(tmp_path / "qpi.safetensors", model,
                      with_calibration(info, calibrate_model(model, info, pairs, settings)))
    for name in ("inputs", "targets"):
        (tmp_path / name).mkdir()
    for pair in pairs:
        tifffile.imwrite(tmp_path / "inputs" / f"{pair.name}.tif", pair.input)
        tifffile.imwrite(tmp_path / "targets" / f"{pair.name}.tif", pair.target[0])
    table = evaluate(EvaluationOptions(models=[path], baselines=False, settings=settings,
                                       input_dir=str(tmp_path / "inputs"), target_dir=str(tmp_path / "targets")))
    summary = {entry["method"]: entry for entry in table.summary()}
    assert set(summary) == {"qpi", "qpi, calibrated", "qpi, self-consistency"}
    assert summary["qpi, calibrated"]["psnr"] is None and summary["qpi"]["psnr"] is not None
    for entry in summary.values():
        assert 0.0 <= entry["coverage_95"] <= 1.0 and entry["images"] == 2
    markdown, _, _ = write_tables(table, tmp_path / "out")
    assert "| qpi, self-consistency | 2 | – |" in markdown.read_text()


def test_an_sr_model_that_samples_with_the_data_step_is_evaluated_from_the_camera_grid(tmp_path):
    """The shipped SR model's sampler has ζ > 0: evaluation reconstructs each pair from its raw grid."""
    import tifffile
    import torch

    from napari_cvdm.checkpoint import ModelInfo, save_model
    from napari_cvdm.data import simulate_sr
    from napari_cvdm.engine import ReconstructionSettings
    from napari_cvdm.model import CVDM, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=1, preset="tiny")
    info = ModelInfo(task="sr", config=config, input_pixel_size_um=0.0626, upsampling_factor=2,
                     input_normalization={"mode": "percentile"}, target_normalization={"mode": "percentile"},
                     sampler={"consistency_strength": 1.0})
    path = save_model(tmp_path / "sr.safetensors", CVDM(config), info)
    for name in ("inputs", "targets"):
        (tmp_path / name).mkdir()
    sample = simulate_sr(np.random.default_rng(0), 48, kind="microtubule")
    tifffile.imwrite(tmp_path / "inputs" / "a.tif", sample.widefield.astype(np.float32))
    tifffile.imwrite(tmp_path / "targets" / "a.tif", sample.target.astype(np.float32))
    table = evaluate(EvaluationOptions(models=[path], baselines=False, task="sr",
                                       settings=ReconstructionSettings(n_samples=2, steps=2, device="cpu"),
                                       input_dir=str(tmp_path / "inputs"), target_dir=str(tmp_path / "targets")))
    row = next(entry for entry in table.summary() if entry["method"] == "sr")
    assert np.isfinite(row["ms_ssim"])
