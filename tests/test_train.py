"""Training engine: stop/export, kill and resume, DDP, NaN guard, model info, data sources."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cvdm.checkpoint import load_model
from napari_cvdm.config import MEASURED_SAMPLER
from napari_cvdm.errors import InputError
from napari_cvdm.engine import ReconstructionSettings, reconstruct, reconstruct_base
from napari_cvdm.train import Batch, TrainConfig, Trainer, TrainingDiverged, train


def _config(tmp_path: Path, name: str = "model", **overrides) -> TrainConfig:
    """A tiny SR run on a handful of small simulated images: fractions of a second per step."""
    settings = dict(task="sr", preset="tiny", patch_size=16, batch_size=2, steps=6, learning_rate=1e-3,
                    warmup_steps=0, simulated_images=4, simulated_size=32, validation_fraction=0.25,
                    validate_every=0, validation_patches=2, validation_samples=2, validation_sample_steps=2,
                    checkpoint_every=2, device="cpu", output=str(tmp_path / f"{name}.safetensors"),
                    calibrate=False)  # the end-of-run calibration is tested in test_calibrate.py
    settings.update(overrides)
    return TrainConfig(**settings)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    with (run_dir / "log.csv").open(newline="") as handle:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(handle)]


def _parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- stop and export


def test_should_stop_stops_within_one_step_and_the_exported_model_loads(tmp_path):
    calls, reports = [], []

    def stop_on_third_check():
        calls.append(1)
        return len(calls) >= 3

    config = _config(tmp_path, steps=50)
    result = train(config, progress=reports.append, should_stop=stop_on_third_check)
    assert result.stopped and result.steps_done == 2 and [r.step for r in reports] == [1, 2]
    model, info = load_model(result.model_path)
    assert info.training["steps"] == 2 and info.training["stopped_early"] is True
    state = torch.load(config.run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.equal(state["ema"][k], v) for k, v in model.state_dict().items())
    assert reports[-1].total_steps == 50 and set(reports[-1].losses) >= {"loss", "noise", "ode", "prior",
                                                                          "regulariser", "lr", "grad_norm"}


def test_exported_sr_model_carries_what_reconstruction_needs(tmp_path):
    result = train(_config(tmp_path, steps=3, sample_steps=7, n_samples=3))
    model, info = load_model(result.model_path)
    assert info.task == "sr" and info.upsampling_factor == 2
    assert info.input_pixel_size_um == pytest.approx(0.0626)
    assert info.output_pixel_size_um == pytest.approx(0.0313)
    assert info.input_normalization["mode"] == "percentile"
    assert info.config.formulation == "residual" and info.config.base == "predictor"
    # the measured default sampler, with the steps asked for
    assert info.sampler == {**MEASURED_SAMPLER, "steps": 7, "n_samples": 3, "clip": 2.0 / info.config.residual_scale}
    training = info.training
    assert training["steps"] == 3 and "simulated sr" in training["data"] and training["device"] == "cpu"
    assert training["wall_time_s"] > 0 and set(training["validation"]) >= {"psnr", "ssim", "mae", "loss"}
    assert (result.run_dir / "best.safetensors").is_file()  # validated at the end
    widefield = np.random.default_rng(0).poisson(50, (20, 24)).astype(np.float32)
    out = reconstruct(model, info, widefield, ReconstructionSettings(n_samples=2, device="cpu"))
    assert out.mean.shape == (40, 48) and out.pixel_size_um == pytest.approx(0.0313)


def test_in_memory_pairs_train_a_qpi_model_in_radians(tmp_path):
    rng = np.random.default_rng(0)
    phases = [rng.random((24, 24)).astype(np.float32) * 3 for _ in range(3)]
    stacks = [np.stack([1 + 0.1 * p, 1 - 0.1 * p]).astype(np.float32) for p in phases]
    config = _config(tmp_path, task="qpi", steps=2, validation_fraction=0.0, input_pixel_size_um=0.21)
    result = train(config, pairs=(stacks, phases))
    _, info = load_model(result.model_path)
    assert info.task == "qpi" and info.target_unit == "rad" and info.upsampling_factor == 1
    assert info.target_normalization["high"] == [3.5] and info.input_pixel_size_um == pytest.approx(0.21)
    assert result.validation is None and "3 in-memory" in info.training["data"]


def test_validation_on_a_flat_patch_does_not_stop_training(tmp_path):
    # a uniform phase (or an empty SR background) gives flat validation targets
    rng = np.random.default_rng(0)
    flat = [np.zeros((24, 24), np.float32) for _ in range(4)]
    for phase in flat:
        phase[-2:, -2:] = 1.0  # all but a corner, outside the one 16-px validation tile at (0, 0)
    stacks = [(1 + 0.01 * rng.standard_normal((2, 24, 24))).astype(np.float32) for _ in flat]
    config = _config(tmp_path, task="qpi", steps=2, validation_fraction=0.25, validate_every=1)
    result = train(config, pairs=(stacks, flat))
    assert result.steps_done == 2 and np.isfinite(result.validation["mae"])


# ----------------------------------------------------------------------------- kill and resume


def _cli_train(config: TrainConfig, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "napari_cvdm.cli", "train"]
    for name, value in config.to_dict().items():
        if isinstance(value, bool):  # a switch
            args += ["--" + name.replace("_", "-")] if value else []
        elif value is not None:
            args += ["--" + name.replace("_", "-"), str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args + list(extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_run_killed_mid_run_resumes_on_the_uninterrupted_trajectory(tmp_path):
    steps = 30
    settings = dict(steps=steps, checkpoint_every=3, validation_fraction=0.0)
    reference = _config(tmp_path, "reference", **settings)
    killed = _config(tmp_path, "killed", **settings)
    victim = _cli_train(killed)
    train(reference)  # uninterrupted, in this process (same single thread as the CLI runs)
    log = killed.run_dir / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) > 8:  # header + 8 steps
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    steps_logged = len(_losses(killed.run_dir))
    assert 8 <= steps_logged < steps and not Path(killed.output).exists()
    state = torch.load(killed.run_dir / "last.pt", weights_only=True)  # complete, loadable
    assert state["step"] % 3 == 0 and 6 <= state["step"] <= steps_logged
    (killed.run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves

    resumed = _cli_train(killed, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert not list(killed.run_dir.glob("*.tmp")) and not list(killed.run_dir.glob(".*.tmp"))
    expected, replayed = _losses(reference.run_dir), _losses(killed.run_dir)
    assert [s for s, _ in replayed] == list(range(1, steps + 1))
    assert np.allclose([v for _, v in replayed], [v for _, v in expected], rtol=1e-6, atol=0)
    final_reference, _ = load_model(reference.output)
    final_resumed, info = load_model(killed.output)
    assert torch.allclose(_parameters(final_reference), _parameters(final_resumed), atol=1e-6)
    assert info.training["steps"] == steps


def test_an_existing_run_is_not_overwritten_and_resume_checks_the_settings(tmp_path):
    train(_config(tmp_path, steps=2))
    with pytest.raises(InputError, match="earlier run"):
        Trainer(_config(tmp_path, steps=4))
    with pytest.raises(InputError, match="patch_size = 16"):
        Trainer(_config(tmp_path, steps=4, patch_size=8), resume=True)
    result = train(_config(tmp_path, steps=4), resume=True)  # more steps: continues at 2
    assert result.steps_done == 4 and [s for s, _ in _losses(result.run_dir)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- NaN guard


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, caplog):
    trainer = Trainer(_config(tmp_path, max_bad_steps=3, validation_fraction=0.0))
    before = _parameters(trainer.model).clone()
    batch = trainer.draw(0)
    poisoned = Batch(batch.y.clone().fill_(float("nan")), batch.x0, batch.t, batch.noise)
    values, skipped = trainer.train_step(poisoned)
    assert skipped and torch.equal(_parameters(trainer.model), before) and "skipped" in caplog.text
    _, skipped = trainer.train_step(batch)
    assert not skipped and not torch.equal(_parameters(trainer.model), before)
    trainer.train_step(poisoned)
    trainer.train_step(poisoned)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        trainer.train_step(poisoned)
    trainer.close()


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    trainer = Trainer(config)
    assert trainer.dist.world_size == world_size
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_stay_identical_and_train_on_twice_the_batch(tmp_path):
    steps = 3
    config = _config(tmp_path, "ddp", steps=steps, validation_fraction=0.0, checkpoint_every=0)
    # fork: the children need not import torch again (seconds each on a small machine)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2,
                                          start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    ddp = torch.cat([v.flatten() for v in ranks[0].values()])
    _, info = load_model(config.output)  # rank 0 exported
    assert info.training["world_size"] == 2 and info.training["effective_batch_size"] == 4

    # One process fed, at every step, the union of both ranks' batches reaches the same weights:
    single = Trainer(_config(tmp_path, "single", steps=steps, validation_fraction=0.0))
    one_rank = Trainer(_config(tmp_path, "one_rank", steps=steps, validation_fraction=0.0))
    assert not torch.equal(single.draw(0, rank=0).y, single.draw(0, rank=1).y)  # each rank its own data
    for step in range(steps):
        single.train_step(Batch.cat([single.draw(step, rank=0), single.draw(step, rank=1)]))
        one_rank.train_step(one_rank.draw(step, rank=0))
    state = single.model.state_dict()
    union = torch.cat([state[k].flatten() for k in ranks[0]])
    alone = torch.cat([one_rank.model.state_dict()[k].flatten() for k in ranks[0]])
    assert torch.allclose(ddp, union, atol=1e-6)
    assert not torch.allclose(ddp, alone, atol=1e-4)
    single.close()
    one_rank.close()


# ----------------------------------------------------------------------------- configuration


def test_config_files_and_their_errors(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('task = "qpi"\npreset = "tiny"\nsteps = 7\n')
    assert TrainConfig.from_file(toml).steps == 7
    sectioned = tmp_path / "sectioned.toml"
    sectioned.write_text('[train]\ntask = "qpi"\nbatch_size = 3\n')
    assert TrainConfig.from_file(sectioned).batch_size == 3
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("task: sr\nlearning_rate: 0.001\n")
    assert TrainConfig.from_file(yaml_file).learning_rate == 0.001
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        TrainConfig.from_file(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text("stepz = 3\n")
    with pytest.raises(InputError, match="stepz"):
        TrainConfig.from_file(tmp_path / "typo.toml")
    with pytest.raises(InputError, match="preset"):
        TrainConfig(preset="huge").check()
    assert TrainConfig(output="a/b.safetensors").run_dir == Path("a/b.run")


# ----------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_starts_from_the_base_weights_and_keeps_its_architecture_and_normalisation(tmp_path):
    import dataclasses

    from napari_cvdm.checkpoint import read_model_info, save_model

    base_path = train(_config(tmp_path, "base", steps=2)).model_path
    base_model, base_info = load_model(base_path)
    # a base normalised differently from the task's default: fine-tuning must keep the base's recipe
    custom = {"mode": "percentile", "low": [0.0], "high": [1.0], "low_pct": 1.0, "high_pct": 99.0}
    save_model(base_path, base_model, dataclasses.replace(base_info, target_normalization=custom))

    config = _config(tmp_path, "tuned", steps=3, preset="small", schedule="cddpm", init_model=str(base_path))
    trainer = Trainer(config)
    try:
        assert (trainer.config.preset, trainer.config.schedule) == ("tiny", "cvdm")
        assert torch.equal(_parameters(trainer.model), _parameters(base_model))
        assert torch.equal(_parameters(trainer.ema), _parameters(base_model))
        result = trainer.fit()
    finally:
        trainer.close()
    tuned_model, tuned_info = load_model(result.model_path)
    assert not torch.equal(_parameters(tuned_model), _parameters(base_model))
    assert tuned_info.target_normalization == custom
    assert tuned_info.training["fine_tuned_from"] == {"file": "base.safetensors", "steps": 2,
                                                      "data": base_info.training["data"]}
    assert read_model_info(result.model_path).config == base_info.config


def test_a_qpi_fine_tune_keeps_its_base_solver_unless_another_is_named(tmp_path):
    rng = np.random.default_rng(1)
    phases = [rng.random((24, 24)).astype(np.float32) * 3 for _ in range(3)]
    stacks = [np.stack([1 + 0.1 * p, 1 - 0.1 * p]).astype(np.float32) for p in phases]
    qpi = dict(task="qpi", steps=1, validation_fraction=0.0, input_pixel_size_um=0.21)
    first = train(_config(tmp_path, "first", tie_method="fft_tie", **qpi), pairs=(stacks, phases)).model_path
    kept = train(_config(tmp_path, "kept", init_model=str(first), **qpi), pairs=(stacks, phases)).model_path
    switched = train(_config(tmp_path, "switched", init_model=str(first), tie_method="us_tie", **qpi),
                     pairs=(stacks, phases)).model_path
    kinds = [load_model(path)[1].base["kind"] for path in (first, kept, switched)]
    assert kinds == ["fft_tie", "fft_tie", "us_tie"]
    with pytest.raises(InputError, match="tie_method is the TIE solver of a residual QPI model"):
        _config(tmp_path, "sr", tie_method="us_tie").check()
    with pytest.raises(InputError, match="tie_method"):
        _config(tmp_path, "bad", task="qpi", tie_method="gs_tie").check()


def test_a_base_correction_fine_tunes_a_tie_model_starting_from_it_and_reconstructs(tmp_path):
    rng = np.random.default_rng(1)
    phases = [rng.random((24, 24)).astype(np.float32) * 3 for _ in range(3)]
    stacks = [np.stack([1 + 0.1 * p, 1 - 0.1 * p]).astype(np.float32) for p in phases]
    qpi = dict(task="qpi", validation_fraction=0.0, input_pixel_size_um=0.21)
    first = train(_config(tmp_path, "first", steps=1, **qpi), pairs=(stacks, phases)).model_path
    trainer = Trainer(_config(tmp_path, "corrected", steps=2, init_model=str(first), base_correction=True, **qpi),
                      pairs=(stacks, phases))
    try:
        original, info = load_model(first)
        assert trainer.model.config.base == "physics_predictor"
        y = torch.from_numpy(trainer.data.train_pairs[0].input[None])
        assert y.shape[1] == 4  # the stack, the TIE phase and the noise-level map ν
        with torch.no_grad():  # before a step the corrected model is the model it started from
            assert torch.equal(trainer.model.condition(y)[0], original.condition(y[:, :3])[0])
    finally:
        trainer.close()
    corrected = train(_config(tmp_path, "corrected2", steps=2, init_model=str(first), base_correction=True, **qpi),
                      pairs=(stacks, phases)).model_path
    model, corrected_info = load_model(corrected)
    assert corrected_info.config.base == "physics_predictor" and corrected_info.base == info.base
    out = reconstruct(model, corrected_info, stacks[0], ReconstructionSettings(n_samples=2, steps=2, device="cpu"))
    assert out.mean.shape == (24, 24) and np.isfinite(out.mean).all()
    base = reconstruct_base(model, corrected_info, stacks[0], device="cpu")
    tie = reconstruct_base(original, info, stacks[0], device="cpu")
    assert base.shape == (24, 24) and not np.allclose(base, tie)  # the trained P moved the base
    # fine-tuning a corrected model (as a user fine-tunes the shipped one) keeps P and its ν input
    again = train(_config(tmp_path, "again", steps=1, init_model=str(corrected), **qpi), pairs=(stacks, phases))
    assert load_model(again.model_path)[1].config.base == "physics_predictor"
    with pytest.raises(InputError, match="base_correction corrects a residual QPI model"):
        _config(tmp_path, "sr", base_correction=True).check()
    paper = train(_config(tmp_path, "paper", steps=1, formulation="paper", **qpi), pairs=(stacks, phases)).model_path
    with pytest.raises(InputError, match="base_correction corrects a TIE base; paper.safetensors has none"):
        Trainer(_config(tmp_path, "p2", init_model=str(paper), base_correction=True, **qpi), pairs=(stacks, phases))


def test_a_stopped_fine_tune_resumes_and_must_keep_its_base(tmp_path, monkeypatch):
    base_path = train(_config(tmp_path, "base", steps=1)).model_path
    monkeypatch.chdir(tmp_path)
    relative = _config(tmp_path, "tuned", steps=4, init_model="base.safetensors")
    calls = []
    first = train(relative, should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert first.stopped and first.steps_done == 2
    # the run recorded the base's absolute path: the same file named another way resumes it
    resumed = train(_config(tmp_path, "tuned", steps=4, init_model=str(base_path)), resume=True)
    assert resumed.steps_done == 4 and [s for s, _ in _losses(resumed.run_dir)] == [1, 2, 3, 4]
    with pytest.raises(InputError, match="init_model"):
        Trainer(_config(tmp_path, "tuned", steps=6), resume=True)  # from scratch is another run


def test_fine_tuning_refuses_a_model_of_another_task_or_a_damaged_file(tmp_path):
    from napari_cvdm.errors import CVDMError, ModelFileError

    base_path = train(_config(tmp_path, "base", steps=1)).model_path
    with pytest.raises(InputError, match="is a sr model; it cannot be fine-tuned for the qpi task"):
        Trainer(_config(tmp_path, "q", task="qpi", init_model=str(base_path)))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(base_path.read_bytes()[:100])
    with pytest.raises(ModelFileError):
        Trainer(_config(tmp_path, "d", init_model=str(damaged)))
    with pytest.raises(CVDMError, match="missing.safetensors"):
        Trainer(_config(tmp_path, "m", init_model=str(tmp_path / "missing.safetensors")))
    with pytest.raises(InputError, match="would overwrite it"):
        _config(tmp_path, "base", init_model=str(base_path)).check()
    with pytest.raises(InputError, match="init_model: must be a valid string"):
        _config(tmp_path, "n", init_model=False).check()


def test_one_pair_trains_with_the_defaults_and_ends_with_a_calibrated_model(tmp_path):
    """One pair of layers, every setting at its default but the network size and the run's length:
    a band of the image is validated on and calibrated on, and the card says so."""
    from napari_cvdm.data import simulate_sr
    from napari_cvdm.data.training import receptive_field

    sample = simulate_sr(np.random.default_rng(0), 288, kind="microtubule")  # room for a patch, a gap and a band
    config = TrainConfig(preset="tiny", steps=2, device="cpu", output=str(tmp_path / "one.safetensors"))
    previews = []
    result = train(config, pairs=([sample.widefield], [sample.target]), preview=True,
                   progress=lambda state: previews.append(state.preview))
    _, info = load_model(result.model_path)
    split = info.training["validation_split"]
    assert split["kind"] == "region" and split["gap_px"] > receptive_field("tiny", "predictor")
    assert result.validation is not None and info.calibration
    assert "held-out band" in info.calibration["source"] and "pixels" in info.calibration["source"]
    assert {key: info.sampler[key] for key in MEASURED_SAMPLER} == MEASURED_SAMPLER
    band = split["bands"][0]
    assert previews[0] is None and previews[-1].step == 2  # validated (and previewed) at the end only
    assert previews[-1].image.shape == (1, 288 - band["band_start"], 256)
    assert previews[-1].offset == (band["band_start"], 0)


def test_fine_tuning_a_model_that_samples_with_the_data_step_previews_and_calibrates(tmp_path):
    """A shipped SR model samples with the data-consistency step (ζ > 0); its fine-tune inherits it.
    The preview and the calibration reconstruct validation inputs from their raw grid, as it needs."""
    import dataclasses

    from napari_cvdm.checkpoint import save_model
    from napari_cvdm.data import simulate_sr

    parent = train(_config(tmp_path, "parent", steps=1)).model_path
    model, info = load_model(parent)
    stepped = save_model(tmp_path / "stepped.safetensors", model,
                         dataclasses.replace(info, input_pixel_size_um=0.0626,
                                             sampler={**info.sampler, "consistency_strength": 1.0}))
    sample = simulate_sr(np.random.default_rng(1), 288, kind="microtubule")
    previews = []
    result = train(_config(tmp_path, "child", steps=1, init_model=str(stepped), calibrate=True, validation_fraction=0.2,
                           validate_every=1, input_pixel_size_um=0.0626),
                   pairs=([sample.widefield], [sample.target]), preview=True,
                   progress=lambda state: previews.append(state.preview))
    _, child = load_model(result.model_path)
    assert child.sampler["consistency_strength"] == 1.0 and child.calibration
    shown = [p for p in previews if p is not None]
    assert shown and np.isfinite(shown[-1].image).all() and shown[-1].image.shape[-1] == 256

    # training data without a pixel size: the step (whose optics need it) is off in the child
    unknown = train(_config(tmp_path, "unknown", steps=1, init_model=str(stepped), validation_fraction=0.0),
                    pairs=([sample.widefield], [sample.target]))
    assert "consistency_strength" not in load_model(unknown.model_path)[1].sampler


def test_a_fine_tuned_model_keeps_its_parents_sampler(tmp_path):
    parent = train(_config(tmp_path, "parent", steps=1, sampler="dpm_solver_2m", sample_steps=3,
                           sample_log_snr_max=6.0)).model_path
    child = train(_config(tmp_path, "child", steps=1, init_model=str(parent))).model_path
    _, parent_info = load_model(parent)
    _, child_info = load_model(child)
    assert child_info.sampler == parent_info.sampler
    assert parent_info.sampler["name"] == "dpm_solver_2m" and parent_info.sampler["log_snr_range"] == (None, 6.0)
    asked = train(_config(tmp_path, "asked", steps=1, init_model=str(parent), sample_steps=5)).model_path
    assert load_model(asked)[1].sampler == {**parent_info.sampler, "steps": 5}
