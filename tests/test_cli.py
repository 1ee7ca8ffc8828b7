"""The ``cvdm`` command line: predict/evaluate/simulate/train/info end to end, and bad input → exit 2."""

import json

import numpy as np
import pytest
import tifffile

from napari_cvdm.checkpoint import read_model_info
from napari_cvdm.cli import _train_config, build_parser, main
from napari_cvdm.io import read_image, write_image

FAST = ["--n-samples", "2", "--steps", "2", "--device", "cpu", "--tile-size", "0"]




def _stack(height=24, width=20, seed=0):
    rng = np.random.default_rng(seed)
    return (1 + 0.1 * rng.standard_normal((2, height, width))).astype(np.float32)


def _run_failing(capsys, argv, *words):
    """Run ``cvdm argv``; it must exit 2 with exactly one readable line on stderr and nothing on stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"cvdm {argv[0]}: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- predict


def test_predict_writes_mean_variance_gamma_with_pixel_size_and_a_sidecar(tmp_path, models, capsys):
    widefield = np.random.default_rng(0).poisson(80, (3, 16, 20)).astype(np.float32)  # a Z stack
    write_image(tmp_path / "cells.tif", widefield, pixel_size_um=0.1, axes="ZYX")
    assert main(["predict", str(tmp_path / "cells.tif"), "--model", str(models["sr"]), "--out",
                 str(tmp_path / "out"), "--keep-samples", *FAST]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 6
    consistency = read_image(tmp_path / "out" / "cells_consistency.tif")  # on the camera grid, plane by plane
    assert consistency.array.shape == (3, 16, 20) and consistency.pixel_size_um == pytest.approx(0.1)
    for name in ("mean", "variance", "gamma"):
        image = read_image(tmp_path / "out" / f"cells_{name}.tif")
        assert image.array.shape == (3, 32, 40) and image.axes == "ZYX"
        assert image.pixel_size_um == pytest.approx(0.05)  # input pixel / upsampling factor
    samples = read_image(tmp_path / "out" / "cells_samples.tif")
    assert samples.array.shape == (2, 3, 32, 40) and samples.axes == "TZYX"
    sidecar = json.loads((tmp_path / "out" / "cells_cvdm.json").read_text())
    assert sidecar["input_pixel_size_um"] == pytest.approx(0.1)
    assert sidecar["output_pixel_size_um"] == pytest.approx(0.05)
    assert sidecar["settings"]["n_samples"] == 2 and sidecar["settings"]["steps"] == 2
    assert sidecar["model"]["task"] == "sr" and sidecar["outputs"]["mean"] == "cells_mean.tif"


def test_predict_grid_and_memory_layout_flags_reach_the_sampler(tmp_path, models, capsys):
    widefield = np.random.default_rng(1).poisson(80, (16, 16)).astype(np.float32)
    write_image(tmp_path / "cells.tif", widefield, pixel_size_um=0.1)
    means = {}
    runs = {"plain": [], "nhwc": ["--channels-last"], "uniform": ["--grid", "uniform"], "narrow": ["--log-snr-max", "6"]}
    for name, flags in runs.items():
        assert main(["predict", str(tmp_path / "cells.tif"), "--model", str(models["sr"]), "--out",
                     str(tmp_path / name), *FAST, *flags]) == 0
        means[name] = read_image(tmp_path / name / "cells_mean.tif").array
        settings = json.loads((tmp_path / name / "cells_cvdm.json").read_text())["settings"]
        assert settings["channels_last"] == (name == "nhwc")
        assert settings["grid"] == ("uniform" if name == "uniform" else "log_snr")  # resolved: the default
        assert settings["log_snr_range"][1] == (6.0 if name == "narrow" else 13.3)
    capsys.readouterr()
    np.testing.assert_allclose(means["nhwc"], means["plain"], atol=1e-4)  # same arithmetic, other layout
    assert np.abs(means["uniform"] - means["plain"]).max() > 1e-3  # another grid samples other times
    assert np.abs(means["narrow"] - means["plain"]).max() > 1e-4, np.abs(means["narrow"] - means["plain"]).max()
    assert main(["predict", str(tmp_path / "cells.tif"), "--model", str(models["sr"]), "--out",
                 str(tmp_path / "bad"), "--log-snr-max", "0"]) == 2
    assert "--log-snr-max" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_predict_a_folder_of_qpi_stacks_uses_the_model_pixel_size_when_the_file_has_none(tmp_path, models, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        tifffile.imwrite(inputs / f"s{i}.tif", _stack(seed=i))
    assert main(["predict", str(inputs), "--model", str(models["qpi"]), "--out", str(tmp_path / "out"), *FAST]) == 0
    mean = read_image(tmp_path / "out" / "s1_mean.tif")
    assert mean.array.shape == (24, 20) and mean.pixel_size_um == pytest.approx(0.21)
    assert 0 <= mean.array.min() and mean.array.max() <= 3.5 + 1e-5  # radians


def test_a_pixel_size_far_from_the_models_is_a_warning_not_an_error(tmp_path, models, capsys):
    write_image(tmp_path / "s.tif", _stack(), pixel_size_um=0.5, axes="CYX")
    assert main(["predict", str(tmp_path / "s.tif"), "--model", str(models["qpi"]), "--out",
                 str(tmp_path / "out"), *FAST]) == 0
    assert "warning" in capsys.readouterr().err


def test_predict_under_torchrun_writes_only_this_ranks_share_of_the_files(tmp_path, models, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        tifffile.imwrite(inputs / f"s{i}.tif", _stack(height=16, width=16, seed=i))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["predict", str(inputs), "--model", str(models["qpi"]), "--out", str(tmp_path / "out"), *FAST]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1_consistency.tif", "s1_cvdm.json", "s1_gamma.tif",
                                                                    "s1_mean.tif", "s1_variance.tif"]
    assert json.loads((tmp_path / "out" / "s1_cvdm.json").read_text())["settings"]["device"] == "cpu"


# ----------------------------------------------------------------------------- bad input


def test_missing_input_file(tmp_path, models, capsys):
    _run_failing(capsys, ["predict", str(tmp_path / "nope.tif"), "--model", str(models["qpi"]), *FAST],
                 "not found", "nope.tif")


def test_wrong_shape(tmp_path, models, capsys):
    tifffile.imwrite(tmp_path / "three.tif", np.ones((3, 24, 20), np.float32))
    _run_failing(capsys, ["predict", str(tmp_path / "three.tif"), "--model", str(models["qpi"]), *FAST],
                 "three.tif", "(…, 2, H, W)", "(3, 24, 20)")


def test_nan_image(tmp_path, models, capsys):
    stack = _stack()
    stack[0, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack)
    _run_failing(capsys, ["predict", str(tmp_path / "nan.tif"), "--model", str(models["qpi"]), "--out",
                          str(tmp_path / "out"), *FAST], "nan.tif", "NaN", "1 pixels")
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True  # nothing left behind


def test_a_model_of_the_other_task(tmp_path, models, capsys):
    tifffile.imwrite(tmp_path / "widefield.tif", np.ones((24, 20), np.float32))
    _run_failing(capsys, ["predict", str(tmp_path / "widefield.tif"), "--model", str(models["qpi"]), *FAST],
                 "QPI model", "defocus stack")
    write_image(tmp_path / "defocus.tif", _stack(), axes="CYX")
    _run_failing(capsys, ["predict", str(tmp_path / "defocus.tif"), "--model", str(models["sr"]), *FAST],
                 "2 channels", "QPI model")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_corrupt_or_missing_model_file(tmp_path, models, capsys, damage):
    tifffile.imwrite(tmp_path / "s.tif", _stack())
    model = tmp_path / "broken.safetensors"
    if damage == "truncated":
        model.write_bytes(models["qpi"].read_bytes()[:-1000])
    elif damage == "garbage":
        model.write_bytes(b"\x00\x01 not a model at all" * 50)
    _run_failing(capsys, ["predict", str(tmp_path / "s.tif"), "--model", str(model), *FAST], "broken.safetensors")


def test_bad_settings_and_training_input(tmp_path, capsys):
    _run_failing(capsys, ["predict", str(tmp_path), "--model", "m.safetensors", "--tile-size", "8"], "tile_size")
    (tmp_path / "run.toml").write_text("stepz = 3\n")
    _run_failing(capsys, ["train", "--config", str(tmp_path / "run.toml")], "stepz")
    _run_failing(capsys, ["train", "--task", "sr", "--input-dir", str(tmp_path / "none"), "--target-dir",
                          str(tmp_path), "--output", str(tmp_path / "m.safetensors")], "does not exist")
    _run_failing(capsys, ["train", "--output", str(tmp_path / "model.pt")], ".safetensors")


def test_fine_tuning_from_a_model_of_the_other_task_or_a_damaged_file(tmp_path, models, capsys):
    common = ["train", "--task", "sr", "--output", str(tmp_path / "tuned.safetensors")]
    _run_failing(capsys, [*common, "--init-model", str(models["qpi"])], "qpi model", "cannot be fine-tuned")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a model")
    _run_failing(capsys, [*common, "--init-model", str(damaged)], "damaged.safetensors")


# ----------------------------------------------------------------------------- other commands


def test_train_flags_override_the_config_file(tmp_path):
    (tmp_path / "run.toml").write_text('[train]\ntask = "qpi"\nsteps = 50\npreset = "tiny"\n')
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "run.toml"), "--steps", "7",
                                      "--learning-rate", "0.01", "--input-dir", "a", "--target-dir", "b"])
    config = _train_config(args)
    assert (config.task, config.preset, config.steps, config.learning_rate) == ("qpi", "tiny", 7, 0.01)
    assert (config.input_dir, config.target_dir) == ("a", "b")


def test_train_command_runs_and_prints_the_model_path(tmp_path, capsys):
    output = tmp_path / "m.safetensors"
    argv = ["train", "--task", "qpi", "--preset", "tiny", "--steps", "2", "--patch-size", "16",
            "--batch-size", "2", "--simulated-images", "2", "--simulated-size", "16", "--validation-fraction",
            "0", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(output) and output.is_file()
    tuned = tmp_path / "tuned.safetensors"  # fine-tune it: the same command with --init-model
    assert main([*argv[:-1], str(tuned), "--preset", "small", "--init-model", str(output)]) == 0
    assert read_model_info(tuned).config.preset == "tiny"


def test_simulate_then_evaluate_with_baselines(tmp_path, models, capsys):
    assert main(["simulate", "--task", "qpi", "--out", str(tmp_path / "sim"), "--images", "2", "--size",
                 "32"]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "sim" / "inputs").glob("*.tif"))) == 2
    assert main(["evaluate", "--model", str(models["qpi"]), "--input-dir", str(tmp_path / "sim" / "inputs"),
                 "--target-dir", str(tmp_path / "sim" / "targets"), "--out", str(tmp_path / "eval"), *FAST]) == 0
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert table in capsys.readouterr().out
    header = table.splitlines()[0]
    for column in ("method", "psnr", "ssim", "ms_ssim", "mae", "spearman_std_error", "coverage_95"):
        assert column in header
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"qpi", "FFT-TIE", "US-TIE"}
    per_image = (tmp_path / "eval" / "metrics_per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * 2


def test_evaluate_refuses_a_model_of_the_other_task(tmp_path, models, capsys):
    _run_failing(capsys, ["evaluate", "--model", str(models["sr"]), "--simulate", "qpi", "--images", "1",
                          "--out", str(tmp_path)], "sr model", "qpi pairs")


def test_info_prints_the_model_metadata(models, capsys):
    assert main(["info", str(models["qpi"])]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "qpi"


@pytest.mark.parametrize("kind", ["fft_tie", "us_tie"])  # US-TIE reports progress before the first step
def test_predict_passes_the_input_optics_to_a_tie_base_and_warns_when_they_differ(tmp_path, capsys, kind,
                                                                                   residual_qpi_writer):
    from napari_cvdm.residual import TIEBase
    from napari_cvdm.data.simulate import phase_object_stack

    model_path = residual_qpi_writer(tmp_path / "residual.safetensors",
                                     TIEBase(10.0, 0.521, 1.0, 0.21, 1.75, kind=kind))
    yy, xx = np.mgrid[:32, :32] / 32
    stack = phase_object_stack(np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05), 1.0, 0.521, 0.21)
    tifffile.imwrite(tmp_path / "cell.tif", stack.astype(np.float32))
    code = main(["predict", str(tmp_path / "cell.tif"), "--model", str(model_path), "--out", str(tmp_path / "o"),
                 "--n-samples", "2", "--device", "cpu", "--dz-um", "2"])
    assert code == 0
    assert "defocus 2 µm (model: 1 µm)" in capsys.readouterr().err
    assert (tmp_path / "o" / "cell_mean.tif").is_file()


def test_predict_defaults_are_the_engines():
    from napari_cvdm.cli import build_parser
    from napari_cvdm.engine import ReconstructionSettings

    args = build_parser().parse_args(["predict", "a.tif", "--model", "m.safetensors"])
    defaults = ReconstructionSettings()
    assert (args.tile_size, args.tile_overlap, args.n_samples) == (defaults.tile_size, defaults.tile_overlap,
                                                                   defaults.n_samples)


def test_plain_mean_reaches_the_reconstruction_settings():
    from napari_cvdm.cli import _settings, build_parser

    parser = build_parser()
    assert _settings(parser.parse_args(["predict", "x.tif", "--model", "m.safetensors"])).shrink_refinement
    args = parser.parse_args(["predict", "x.tif", "--model", "m.safetensors", "--plain-mean"])
    assert _settings(args).shrink_refinement is False
