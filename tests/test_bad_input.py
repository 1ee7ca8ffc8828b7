"""Hostile input (issue 18): every bad flag, file or setting is one readable line and exit 2, before any
computing, and no file the user had changes; a training run stopped by a signal exits 3."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings, strategies as st

from napari_cvdm import train as train_module
from napari_cvdm.cli import EXIT_STOPPED, main
from napari_cvdm.errors import InputError
from napari_cvdm.io import write_image
from napari_cvdm.engine import ReconstructionSettings, check_call

sys.path.insert(0, os.path.dirname(__file__))
from test_cli import FAST  # noqa: E402 - the CLI tests' fast sampling flags

TINY_TRAIN = ["--task", "sr", "--preset", "tiny", "--steps", "2", "--patch-size", "16", "--batch-size", "2",
              "--simulated-images", "2", "--simulated-size", "32", "--validation-fraction", "0", "--device", "cpu"]


def _snapshot(folder) -> dict:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv, *words) -> str:
    """``cvdm argv`` exits 2 with exactly one readable line naming the problem, and no traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"cvdm {argv[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- flags: refused by name

PREDICT = ["predict", "x.tif", "--model", "m.safetensors"]
EVALUATE = ["evaluate", "--simulate", "sr"]
SIMULATE = ["simulate", "--task", "sr", "--out", "sim"]
FLAG_CASES = {
    "pixel-size 0": (PREDICT + ["--pixel-size", "0"], "--pixel-size", "> 0"),
    "pixel-size -1": (PREDICT + ["--pixel-size", "-1"], "--pixel-size"),
    "pixel-size nan": (PREDICT + ["--pixel-size", "nan"], "--pixel-size", "nan"),
    "pixel-size inf": (PREDICT + ["--pixel-size", "inf"], "--pixel-size"),
    "pixel-size text": (PREDICT + ["--pixel-size", "abc"], "--pixel-size", "'abc'"),
    "tile 0 overlap -5": (PREDICT + ["--tile-size", "0", "--tile-overlap", "-5"], "--tile-overlap", "-5"),
    "tile-size -3": (PREDICT + ["--tile-size", "-3"], "--tile-size"),
    "tile-size 8": (PREDICT + ["--tile-size", "8"], "tile_size", "between 16 and"),
    "overlap over half": (PREDICT + ["--tile-size", "64", "--tile-overlap", "40"], "overlap", "32"),
    "steps huge": (PREDICT + ["--steps", "99999999999999999999"], "--steps"),
    "steps 0": (PREDICT + ["--steps", "0"], "--steps"),
    "n-samples 0": (PREDICT + ["--n-samples", "0"], "--n-samples"),
    "n-samples 1e9": (PREDICT + ["--n-samples", "1000000000"], "--n-samples", "10000"),
    "n-samples two": (PREDICT + ["--n-samples", "two"], "--n-samples", "'two'"),
    "predict seed -1": (PREDICT + ["--seed", "-1"], "--seed"),
    "device cpu:x": (PREDICT + ["--device", "cpu:x"], "--device", "cpu:x"),
    "device tpu": (PREDICT + ["--device", "tpu"], "--device"),
    "eta 2": (PREDICT + ["--eta", "2"], "--eta"),
    "max-batch 0": (PREDICT + ["--max-batch", "0"], "--max-batch"),
    "unknown sampler": (PREDICT + ["--sampler", "magic"], "--sampler"),
    "evaluate size 1": (EVALUATE + ["--size", "1"], "--size", "≥ 16"),
    "evaluate na -1": (EVALUATE + ["--na", "-1"], "--na"),
    "evaluate na 0": (EVALUATE + ["--na", "0"], "--na"),
    "evaluate wavelength 0": (EVALUATE + ["--wavelength", "0"], "--wavelength"),
    "evaluate dz nan": (EVALUATE + ["--dz", "nan"], "--dz"),
    "evaluate images 0": (EVALUATE + ["--images", "0"], "--images"),
    "evaluate pixel-size -1": (EVALUATE + ["--pixel-size", "-1"], "--pixel-size"),
    "evaluate seed -1": (EVALUATE + ["--seed", "-1"], "--seed"),
    "simulate size 100000": (SIMULATE + ["--size", "100000"], "--size", "4096"),
    "simulate size 1": (SIMULATE + ["--size", "1"], "--size"),
    "simulate images 0": (SIMULATE + ["--images", "0"], "--images"),
    "simulate seed -1": (SIMULATE + ["--seed", "-1"], "--seed"),
    "train steps 1e3": (["train", "--steps", "1e3"], "--steps", "'1e3'"),
    "train steps abc": (["train", "--steps", "abc"], "--steps"),
    "train patch 16.5": (["train", "--patch-size", "16.5"], "--patch-size"),
    "unknown flag": (["train", "--stepz", "3"], "--stepz"),
}


@pytest.mark.parametrize("case", FLAG_CASES, ids=list(FLAG_CASES))
def test_a_bad_flag_is_one_line_naming_it(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    argv, *words = FLAG_CASES[case]
    _one_line_error(capsys, argv, *words)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# ----------------------------------------------------------------------------- training settings

TRAIN_SETTING_CASES = {
    "steps huge": (["--steps", "99999999999999999999"], "steps", "100000000"),
    "seed -1": (["--seed", "-1"], "seed", "-1"),
    "grad-clip -1": (["--grad-clip", "-1"], "grad_clip"),
    "learning-rate nan": (["--learning-rate", "nan"], "learning_rate", "nan"),
    "learning-rate 0": (["--learning-rate", "0"], "learning_rate"),
    "device cpu:x": (["--device", "cpu:x"], "device", "cpu:x"),
    "ema-decay 1": (["--ema-decay", "1"], "ema_decay"),
    "validation-fraction 1.5": (["--validation-fraction", "1.5"], "validation_fraction"),
    "formulation": (["--formulation", "other"], "formulation", "'paper' or 'residual'"),
    "source-images missing": (["--source-images", "no/such/folder"], "source_images", "does not exist"),
    "batch-size 0": (["--batch-size", "0"], "batch_size"),
    "precision fp16": (["--precision", "fp16"], "precision"),
    "task": (["--task", "xyz"], "task"),
    "preset": (["--preset", "huge"], "preset"),
    "output .pt": (["--output", "model.pt"], ".safetensors"),
}


@pytest.mark.parametrize("case", TRAIN_SETTING_CASES, ids=list(TRAIN_SETTING_CASES))
def test_a_bad_training_setting_is_refused_by_name(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    flags, *words = TRAIN_SETTING_CASES[case]
    _one_line_error(capsys, ["train", "--output", "m.safetensors", *flags], *words)
    assert list(tmp_path.iterdir()) == []


CONFIG_CASES = {
    "steps text": ('steps = "abc"\n', "steps", "'abc'"),
    "learning_rate text": ('learning_rate = "fast"\n', "learning_rate", "'fast'"),
    "ema_decay text": ('ema_decay = "x"\n', "ema_decay"),
    "patch_size float": ("patch_size = 16.5\n", "patch_size", "16.5"),
    "train = 5": ("train = 5\n", "[train]", "5"),
    "input_dir int": ("input_dir = 5\n", "input_dir"),
    "steps = 1e3": ("steps = 1e3\n", "steps", "1000.0"),
    "overwrite text": ('overwrite = "yes"\n', "overwrite"),
    "steps list": ("steps = [1]\n", "steps"),
    "unknown key": ("stepz = 3\n", "stepz"),
    "broken toml": ("steps = \n", "not valid TOML"),
    "non-utf-8": (b"description = \"\xff\xfe\"\n", "UTF-8"),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_a_bad_config_file_is_one_line(tmp_path, capsys, case):
    text, *words = CONFIG_CASES[case]
    config = tmp_path / "run.toml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    _one_line_error(capsys, ["train", "--config", str(config), "--output", str(tmp_path / "m.safetensors")], *words)
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


def test_a_missing_config_file(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "none.toml")], "not found", "none.toml")


# ----------------------------------------------------------------------------- unusable output locations


def _a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    return str(tmp_path / "file")


OUTPUT_CASES = {
    "predict --out a file": lambda t, m: ["predict", _input(t), "--model", str(m["sr"]), "--out", _a_file(t), *FAST],
    "predict --out under a file": lambda t, m: ["predict", _input(t), "--model", str(m["sr"]), "--out",
                                                _a_file(t) + "/sub", *FAST],
    "evaluate --out a file": lambda t, m: ["evaluate", "--simulate", "sr", "--images", "1", "--out", _a_file(t)],
    "simulate --out a file": lambda t, m: ["simulate", "--task", "sr", "--out", _a_file(t), "--images", "1"],
    "train --output under a file": lambda t, m: ["train", *TINY_TRAIN, "--output", _a_file(t) + "/m.safetensors"],
}


def _input(tmp_path, name="img.tif", folder="in"):
    (tmp_path / folder).mkdir(exist_ok=True)
    path = tmp_path / folder / name
    write_image(path, np.random.default_rng(0).poisson(80, (16, 16)).astype(np.float32), pixel_size_um=0.0626)
    return str(path)


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=list(OUTPUT_CASES))
def test_an_unusable_output_location_is_refused_before_computing(tmp_path, models, capsys, case):
    argv = OUTPUT_CASES[case](tmp_path, models)
    before = _snapshot(tmp_path)
    _one_line_error(capsys, argv, "is a file, not a folder")
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- data loss


def test_predict_never_writes_over_an_input(tmp_path, models, capsys):
    _input(tmp_path, "cell.tif", "d")
    _input(tmp_path, "cell_mean.tif", "d")  # an input named like an output
    before = _snapshot(tmp_path)
    _one_line_error(capsys, ["predict", str(tmp_path / "d"), "--model", str(models["sr"]), "--out",
                             str(tmp_path / "d"), *FAST], "folder of inputs")
    assert _snapshot(tmp_path) == before


def test_two_inputs_with_the_same_name_are_refused_before_computing(tmp_path, models, capsys):
    a, b = _input(tmp_path, "img.tif", "a"), _input(tmp_path, "img.tif", "b")
    before = _snapshot(tmp_path)
    _one_line_error(capsys, ["predict", a, b, "--model", str(models["sr"]), "--out", str(tmp_path / "o"), *FAST],
                    "img_*.tif", "separate --out")
    assert _snapshot(tmp_path) == before


def test_existing_outputs_need_overwrite(tmp_path, models, capsys):
    argv = ["predict", _input(tmp_path), "--model", str(models["sr"]), "--out", str(tmp_path / "o"), *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path)
    _one_line_error(capsys, argv, "img_mean.tif already exists", "--overwrite")
    assert _snapshot(tmp_path) == before
    assert main([*argv, "--overwrite"]) == 0


def test_one_sample_writes_no_variance_and_the_sidecar_says_why(tmp_path, models, capsys):
    argv = ["predict", _input(tmp_path), "--model", str(models["sr"]), "--out", str(tmp_path / "o"), *FAST]
    assert main([*argv, "--n-samples", "1"]) == 0
    assert not (tmp_path / "o" / "img_variance.tif").exists()
    sidecar = json.loads((tmp_path / "o" / "img_cvdm.json").read_text())
    assert "variance" not in sidecar["outputs"] and "one sample" in sidecar["variance"]


def test_simulate_into_a_folder_holding_a_dataset_is_refused(tmp_path, capsys):
    argv = ["simulate", "--task", "sr", "--out", str(tmp_path / "sim"), "--images", "1", "--size", "32"]
    assert main(argv) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path)
    _one_line_error(capsys, argv, "already holds files")
    assert _snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny training run (model + run folder), copied fresh for each test."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(["train", *TINY_TRAIN, "--output", str(folder / "m.safetensors")]) == 0
    return folder


@pytest.fixture
def run(tmp_path, trained):
    import shutil

    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_train_never_overwrites_an_existing_model(run, capsys):
    before = _snapshot(run)
    _one_line_error(capsys, ["train", *TINY_TRAIN, "--output", str(run / "m.safetensors")], "earlier run",
                    "--overwrite")
    (run / "other.safetensors").write_bytes(b"a model the user has")
    before = _snapshot(run)
    _one_line_error(capsys, ["train", *TINY_TRAIN, "--output", str(run / "other.safetensors")],
                    "other.safetensors already exists", "--overwrite")
    assert _snapshot(run) == before
    assert main(["train", *TINY_TRAIN, "--output", str(run / "other.safetensors"), "--overwrite"]) == 0
    assert (run / "other.safetensors").read_bytes() != b"a model the user has"


def test_a_refused_resume_changes_nothing(run, capsys):
    before = _snapshot(run)
    _one_line_error(capsys, ["train", *TINY_TRAIN, "--patch-size", "8", "--output", str(run / "m.safetensors"),
                             "--resume"], "patch_size = 16")
    assert _snapshot(run) == before


def test_a_checkpoint_without_the_expected_keys_is_one_line(run, capsys):
    torch.save({"step": 3}, run / "m.run" / "last.pt")
    before = _snapshot(run)
    _one_line_error(capsys, ["train", *TINY_TRAIN, "--output", str(run / "m.safetensors"), "--resume"],
                    "last.pt", "not a napari-cvdm training checkpoint", "config")
    assert _snapshot(run) == before


def test_a_run_folder_in_use_is_refused_and_a_dead_runs_lock_taken_over(run, capsys):
    import socket

    lock = run / "m.run" / "lock"
    lock.write_text(f"{socket.gethostname()} {os.getppid()}\n")  # a live process: this one's parent
    before = _snapshot(run)
    argv = ["train", *TINY_TRAIN, "--steps", "3", "--output", str(run / "m.safetensors"), "--resume"]
    _one_line_error(capsys, argv, "in use by another training run", str(os.getppid()))
    assert _snapshot(run) == before
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True)
    lock.write_text(f"{socket.gethostname()} {finished.stdout.strip()}\n")  # that process has ended
    assert main(argv) == 0
    assert not lock.exists()


# ----------------------------------------------------------------------------- stopped by a signal


@pytest.fixture
def restore_signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def test_a_stop_while_the_data_are_prepared_exports_nothing(run, capsys, monkeypatch, restore_signals):
    load = train_module.load_training_data

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption, before the first step
        return load(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_training_data", interrupted)
    before = _snapshot(run)
    assert main(["train", *TINY_TRAIN, "--output", str(run / "m.safetensors"), "--overwrite"]) == EXIT_STOPPED
    assert "nothing was saved or exported" in capsys.readouterr().err
    assert _snapshot(run)["m.safetensors"] == before["m.safetensors"]


def test_a_run_stopped_by_a_signal_saves_exports_and_exits_3(tmp_path, capsys, monkeypatch, restore_signals):
    step = train_module.Trainer.train_step

    def preempted(self, batch):
        os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch)

    monkeypatch.setattr(train_module.Trainer, "train_step", preempted)
    output = tmp_path / "m.safetensors"
    assert main(["train", *TINY_TRAIN, "--steps", "5", "--output", str(output)]) == EXIT_STOPPED
    assert "stopped early at step 1" in capsys.readouterr().err
    assert output.is_file() and torch.load(tmp_path / "m.run" / "last.pt", weights_only=True)["step"] == 1


# ----------------------------------------------------------------------------- bad files in a batch


def _bad_files(folder):
    tifffile.imwrite(folder / "b_flat.tif", np.full((16, 16), 7.0, np.float32))
    tifffile.imwrite(folder / "c_rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(folder / "d_6d.tif", np.ones((1, 1, 1, 2, 16, 16), np.float32))


@pytest.mark.parametrize("name, words", [("b_flat.tif", ()), ("c_rgb.tif", ("RGB",)), ("d_6d.tif", ("6 dimensions",))])
def test_a_bad_single_file_is_one_line_naming_it(tmp_path, models, capsys, name, words):
    _bad_files(tmp_path)
    _one_line_error(capsys, ["predict", str(tmp_path / name), "--model", str(models["sr"]), "--out",
                             str(tmp_path / "o"), *FAST], name, *words)


def test_bad_files_in_a_folder_are_skipped_by_name_and_the_rest_run(tmp_path, models, capsys):
    _input(tmp_path, "a_good.tif", "in")
    _bad_files(tmp_path / "in")
    _input(tmp_path, "e_good.tif", "in")
    code = main(["predict", str(tmp_path / "in"), "--model", str(models["sr"]), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    skipped = [line for line in err if line.startswith("cvdm predict: skipped ")]
    assert [line.split()[3].rstrip(":") for line in skipped] == ["b_flat.tif", "c_rgb.tif", "d_6d.tif"]
    assert err[-1].startswith("cvdm predict: error: 3 of 5 files failed (b_flat.tif, c_rgb.tif, d_6d.tif)")
    assert (tmp_path / "o" / "a_good_mean.tif").is_file() and (tmp_path / "o" / "e_good_mean.tif").is_file()


# ----------------------------------------------------------------------------- the Python API

API_CASES = {
    "settings as a dict": (dict(settings={"n_samples": 2}), "ReconstructionSettings"),
    "n_samples two": (dict(settings=ReconstructionSettings(n_samples="two")), "n_samples"),
    "float tile size": (dict(settings=ReconstructionSettings(tile_size=64.0)), "tile_size"),
    "tile_overlap None": (dict(settings=ReconstructionSettings(tile_overlap=None)), "tile_overlap"),
    "seed -1": (dict(settings=ReconstructionSettings(seed=-1)), "seed"),
    "device cpu:x": (dict(settings=ReconstructionSettings(device="cpu:x")), "device"),
    "pixel size text": (dict(input_pixel_size_um="x"), "input_pixel_size_um"),
    "pixel size 0": (dict(input_pixel_size_um=0), "input_pixel_size_um"),
    "pixel size -1": (dict(input_pixel_size_um=-1.0), "input_pixel_size_um"),
    "pixel size nan": (dict(input_pixel_size_um=math.nan), "input_pixel_size_um"),
}


@pytest.mark.parametrize("case", API_CASES, ids=list(API_CASES))
def test_reconstruct_refuses_bad_arguments_with_an_input_error(models, case):
    from napari_cvdm.checkpoint import load_model
    from napari_cvdm.engine import reconstruct

    kwargs, word = API_CASES[case]
    model, info = load_model(models["sr"])
    kwargs = {"settings": ReconstructionSettings(n_samples=2, steps=2, device="cpu"), **kwargs}
    with pytest.raises(InputError, match=word):
        reconstruct(model, info, np.ones((16, 16), np.float32), **kwargs)


def _is_whole(value, low, high=None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 20_000), st.floats(allow_nan=True),
                      st.text(max_size=4), st.sampled_from(["cpu", "cuda:0", "cpu:x", "auto", "fp32"]))


@settings(derandomize=True, max_examples=30, deadline=None)
@given(n_samples=ANY_VALUE, steps=ANY_VALUE, seed=ANY_VALUE)
def test_settings_check_accepts_exactly_the_whole_numbers_in_range(n_samples, steps, seed):
    valid = _is_whole(n_samples, 1, 10_000) and (steps is None or _is_whole(steps, 1, 100_000)) and _is_whole(seed, 0)
    candidate = ReconstructionSettings(n_samples=n_samples, steps=steps, seed=seed, device="cpu")
    if valid:
        candidate.check()
    else:
        with pytest.raises(InputError, match="n_samples|steps|seed"):
            candidate.check()


@settings(derandomize=True, max_examples=30, deadline=None)
@given(tile_size=ANY_VALUE, tile_overlap=ANY_VALUE)
def test_settings_check_on_tiles(tile_size, tile_overlap):
    valid = (tile_size is None or _is_whole(tile_size, 16)) and _is_whole(tile_overlap, 0) \
        and (tile_size is None or tile_overlap <= tile_size // 2)
    candidate = ReconstructionSettings(tile_size=tile_size, tile_overlap=tile_overlap, device="cpu")
    if valid:
        candidate.check()
    else:
        with pytest.raises(InputError, match="[Tt]ile"):
            candidate.check()


@settings(derandomize=True, max_examples=30, deadline=None)
@given(device=ANY_VALUE, eta=ANY_VALUE, pixel=ANY_VALUE)
def test_settings_check_on_device_eta_and_pixel_size(device, eta, pixel):
    device_ok = isinstance(device, str) and device in ("cpu", "cuda:0", "auto")
    eta_ok = eta is None or (isinstance(eta, int | float) and not isinstance(eta, bool) and 0 <= eta <= 1)
    candidate = ReconstructionSettings(device=device, eta=eta)
    if device_ok and eta_ok:
        candidate.check()
    else:
        with pytest.raises(InputError):
            candidate.check()
    pixel_ok = pixel is None or (isinstance(pixel, int | float) and not isinstance(pixel, bool)
                                 and math.isfinite(pixel) and pixel > 0)
    if pixel_ok:
        check_call(None, pixel)
    else:
        with pytest.raises(InputError, match="input_pixel_size_um"):
            check_call(None, pixel)
