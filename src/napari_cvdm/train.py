"""Training engine: one loop for the CLI, the napari widget and ``torchrun``.

``train(config)`` trains a CVDM on simulated data of a task, on paired TIFF
folders, or on in-memory pairs, and exports the EMA weights as a model file
(:func:`napari_cvdm.checkpoint.save_model`) with a filled-in :class:`ModelInfo`.

Files. ``config.output`` is the exported model (``name.safetensors``); beside it
the run folder ``name.run/`` holds ``last.pt`` (everything needed to resume),
``best.safetensors`` (EMA weights at the best validation PSNR), ``log.csv`` (one
row per step, validation columns filled when validated), ``config.json`` and,
when the ``tensorboard`` package is installed, TensorBoard events. Every file is
written to a temporary name and renamed, so a killed run leaves either the old
or the new complete file, never a truncated one.

Randomness. Each step's patches, flips, diffusion times and noise come from
generators seeded by (seed, rank, step) — nothing carries over between steps —
so a run resumed at step k replays the uninterrupted run exactly, and every
process of a multi-GPU run draws its own data. ``last.pt`` still stores the
global torch RNG states (dropout), as tensors.

Several GPUs. Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE > 1`` in the
environment) the same call joins a process group (NCCL on CUDA, gloo on CPU),
wraps the loss in DistributedDataParallel and averages gradients, so the
effective batch is ``N × batch_size``. Rank 0 validates and writes every file.

Resume state (``last.pt``) is written with ``torch.save`` and read with
``torch.load(weights_only=True)``: tensors, numbers and strings only (the
configuration as a JSON string), never pickled objects. Model files are
safetensors + JSON.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import ModelInfo, load_model, save_model, write_atomically
from .config import MEASURED_SAMPLER, TrainConfig
from .data.training import TrainingData, load_training_data
from .errors import CVDMError, InputError
from .model import CVDM, ModelConfig, RuntimeOptions, SamplingOptions, low_discrepancy_times, sample_statistics
from .residual import base_for

log = logging.getLogger(__name__)

#: A preview reconstructs at most this many pixels of the held-out data per side (target grid).
PREVIEW_SIDE = 256
LOSS_TERMS = ("loss", "noise", "ode", "prior", "regulariser", "base")
#: λ of residual models is predicted at 1/4 of the resolution (smooth, tile-independent).
RESIDUAL_SCHEDULE_DOWNSAMPLE = 4
VALIDATION_METRICS = ("loss", "psnr", "ssim", "mae")
LOG_COLUMNS = ("step", "elapsed_s", "lr", *LOSS_TERMS, "grad_norm", "skipped",
               *(f"val_{name}" for name in VALIDATION_METRICS))
#: Settings a resumed run must share with the run it continues (the rest, e.g. steps, may change).
RESUME_KEYS = ("task", "preset", "schedule", "patch_size", "batch_size", "learning_rate", "warmup_steps",
               "weight_decay", "seed", "input_dir", "target_dir", "simulated_images", "simulated_size",
               "input_channels", "target_channels", "init_model", "formulation")
STATE_FILE = "last.pt"
BEST_FILE = "best.safetensors"
LOG_FILE = "log.csv"
#: In the run folder while a run uses it: the owner's host name and process id.
LOCK_FILE = "lock"
#: What ``last.pt`` must hold to be resumed.
STATE_KEYS = ("config", "step", "bad_steps", "elapsed_s", "validation", "best_validation", "model", "ema",
              "optimizer", "scheduler", "torch_rng")
# Separate seed streams, so that data, diffusion noise and validation never share draws.
_DATA_STREAM, _NOISE_STREAM, _VALIDATION_STREAM = 1, 2, 3


class TrainingDiverged(CVDMError):
    """Training produced non-finite losses or gradients too many steps in a row."""


# ----------------------------------------------------------------------------- progress and result


@dataclass
class TrainProgress:
    """Reported after every step. ``losses``: the loss terms, ``lr`` and ``grad_norm`` of
    this step (averaged over processes); ``validation``: metrics if validated at this step."""

    step: int
    total_steps: int
    losses: dict[str, float]
    validation: dict[str, float] | None
    elapsed_s: float
    eta_s: float | None
    skipped: bool = False
    preview: Preview | None = None


@dataclass
class Preview:
    """The EMA model's reconstruction (mean of one sample) of part of the validation data at ``step``.

    ``image`` ``(C, h, w)`` in the target's units; ``offset`` ``(row, column)``: where it lies in
    ``source`` (target pixels), e.g. the held-out band of the training image.
    """

    image: np.ndarray
    step: int
    source: str
    offset: tuple[int, int]


@dataclass
class TrainResult:
    """``model_path``: the exported model; ``stopped``: ended early by ``should_stop``;
    ``validation``: the last validation metrics (None without validation data); ``exported``:
    False when stopped before the first step (nothing saved, ``model_path`` untouched)."""

    model_path: Path
    steps_done: int
    stopped: bool
    validation: dict[str, float] | None
    run_dir: Path | None = None
    best_validation: dict[str, float] | None = None
    exported: bool = True


# ----------------------------------------------------------------------------- data


@dataclass
class Batch:
    """One training batch on the model grid: condition ``y`` ``(B, Cy, p, p)``, target
    ``x0`` ``(B, Cx, p, p)``, times ``t`` ``(B,)`` and noise ε ``(B, Cx, p, p)``."""

    y: torch.Tensor
    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        return Batch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in dataclasses.fields(Batch)))

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(Batch)))


def load_base_model(config: TrainConfig) -> tuple[CVDM, ModelInfo] | None:
    """The model to fine-tune, ``config.init_model``, on the CPU (None without one).

    Read once, before any data; InputError if it is for another task, ModelFileError if damaged.
    """
    if config.init_model is None:
        return None
    path = Path(config.init_model).expanduser()
    model, info = load_model(path)
    if info.task != config.task:
        raise InputError(f"{path.name} is a {info.task} model; it cannot be fine-tuned for the {config.task} task.")
    if config.base_correction and not base_for(info.config).needs_tie:
        raise InputError(f"base_correction corrects a TIE base; {path.name} has none "
                         f"({info.config.formulation} formulation).")
    return model, info


def model_sampler(config: TrainConfig, parent: ModelInfo | None, clip: float, pixel_known: bool = True) -> dict:
    """The sampling defaults the trained model records: the settings given in ``config``, else the
    fine-tuned model's (``parent``), else :data:`~napari_cvdm.config.MEASURED_SAMPLER`. A parent's
    data-consistency step is kept only when the training data's pixel size is known (the step's
    optics need it)."""
    sampler = dict(parent.sampler) if parent is not None else dict(MEASURED_SAMPLER)
    if not pixel_known and sampler.pop("consistency_strength", 0.0):
        log.info("the data-consistency step of %s is off in this model: the training data has no pixel size",
                 Path(config.init_model).name if config.init_model else "the parent")
    if config.sampler is not None and config.sampler != sampler.get("name"):
        sampler = {key: value for key, value in sampler.items() if key != "eta"}  # η belongs to its sampler
        sampler["name"] = config.sampler
    if config.sample_steps is not None:
        sampler["steps"] = config.sample_steps
    if config.sample_log_snr_max is not None:
        sampler.update(grid="log_snr", log_snr_range=(None, float(config.sample_log_snr_max)))
    sampler.update(n_samples=config.n_samples, clip=clip)
    if sampler.get("log_snr_range") is not None:
        sampler["log_snr_range"] = tuple(sampler["log_snr_range"])
    return sampler


def _seed(*parts: int) -> int:
    """A 64-bit seed from integers (independent streams for different tuples)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


# ----------------------------------------------------------------------------- distributed


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _join_process_group(device_name: str) -> _Distributed:
    """Join the process group ``torchrun`` describes in the environment (no-op for one process)."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world_size)
    return _Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns)


class _LossModule(nn.Module):
    """``forward`` = the CVDM loss terms as one vector, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CVDM):
        super().__init__()
        self.model = model

    def forward(self, x0, y, t, noise) -> torch.Tensor:
        return torch.stack(list(self.model.loss(x0, y, t=t, noise=noise)))


# ----------------------------------------------------------------------------- trainer


def _learning_rate_factor(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10 % at ``steps``.

    The warm-up lasts ``warmup_steps`` but at most a tenth of the run, so that a short
    run (a quick try in the Train widget) still reaches its learning rate.
    """
    warmup = min(config.warmup_steps, config.steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, config.steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _model_config(config: TrainConfig, data: TrainingData) -> ModelConfig:
    """The architecture a new run trains: the paper's CVDM, or the residual one with a smooth schedule."""
    spec = data.spec
    residual = {}
    if data.residual_base.has_base:
        residual = dict(base=data.residual_base.kind, residual_scale=data.residual_scale,
                        schedule_downsample=RESIDUAL_SCHEDULE_DOWNSAMPLE, padding="reflect")
    return ModelConfig(x_channels=spec.target_channels, y_channels=spec.input_channels,
                       preset=config.preset, schedule=config.schedule, **residual)


def _with_base_correction(model: CVDM, kind: str) -> CVDM:
    """A physics-base model as the base ``kind`` that corrects it with a new, zero-initialised base
    predictor: the same reconstruction until training moves P."""
    corrected = CVDM(dataclasses.replace(model.config, base=kind))
    missing, unexpected = corrected.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("base_net.") for key in missing), (missing, unexpected)
    log.info("fine-tuning adds a base correction: b = TIE + s·P([I, TIE, noise level]), P trained jointly")
    return corrected


class Trainer:
    """A training run: model, EMA copy, optimiser, data and files. :func:`train` drives it.

    Parts are public so that tests and other front ends can step it: :meth:`draw`
    gives the batch of a step for any rank, :meth:`train_step` applies one update,
    :meth:`validate` scores the EMA model, :meth:`save_state`/:meth:`export` write files.
    """

    def __init__(self, config: TrainConfig, pairs: tuple[Sequence, Sequence] | None = None,
                 resume: bool = False, validation: tuple[Sequence, Sequence] | None = None):
        from .engine import resolve_device

        config.check()
        base_net, base = load_base_model(config) or (None, None)
        if base is not None:
            # the run is defined by the base's architecture and its absolute path (compared on resume)
            adopted = {"preset": base.config.preset, "schedule": base.config.schedule,
                       "formulation": base.config.formulation,
                       "init_model": str(Path(config.init_model).expanduser().resolve())}
            if config.task == "generic":
                adopted.update(input_channels=base.config.y_channels, target_channels=base.config.x_channels)
            changed = {k: v for k, v in adopted.items() if k != "init_model" and getattr(config, k) != v}
            if changed:
                log.info("fine-tuning %s: its %s are used", Path(config.init_model).name,
                         ", ".join(f"{k} {v}" for k, v in changed.items()))
            config = dataclasses.replace(config, **adopted)
        self.config = config
        self.base_model = base
        self.dist = _join_process_group(config.device)
        if self.dist.active and torch.cuda.is_available() and config.device in ("auto", "cuda"):
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(config.device)
            if self.dist.active and self.device.type == "cpu":
                # processes on one machine share its cores
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        self.autocast_dtype = (torch.bfloat16 if config.precision == "bf16"
                               or (config.precision == "auto" and self.device.type == "cuda") else None)
        self.run_dir = config.run_dir
        self._lock: Path | None = None
        self._log_writer = None
        self._tensorboard = None
        try:
            if self.dist.is_main:
                self._claim_run_dir(resume)
            self._build(pairs, base, base_net, resume, validation)
        except BaseException:
            self.close()
            raise

    def _build(self, pairs, base: ModelInfo | None, base_net: CVDM | None, resume: bool, validation) -> None:
        """Data, model, optimiser and (resumed) state; the run folder is written only once all is well."""
        config = self.config
        self.data = load_training_data(config, pairs, base, validation)
        spec = self.data.spec
        torch.manual_seed(config.seed)
        if base_net is not None and self.data.residual_base.kind != base_net.config.base:
            base_net = _with_base_correction(base_net, self.data.residual_base.kind)
        self.model_config = base_net.config if base_net is not None else _model_config(config, self.data)
        self.model = (CVDM(self.model_config) if base_net is None else base_net.train()).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.sampler = model_sampler(config, base, self.ema.clip, self.data.input_pixel_size_um is not None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _learning_rate_factor(config))
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.loss_module = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0
        self.bad_steps = 0
        self.elapsed_before_s = 0.0
        self.validation: dict[str, float] | None = None
        self.best_validation: dict[str, float] | None = None
        if resume and (self.run_dir / STATE_FILE).is_file():
            self.load_state(self.run_dir / STATE_FILE)  # before anything is written: a refusal changes nothing
        if self.dist.is_main:
            self._prepare_run_dir()
            self._open_logs()
            action = "resuming" if self.step else "fine-tuning" if base is not None else "training"
            log.info("%s %s model (%s, %s%s) on %s, %s: step %d of %d; batch %d × %d process(es); run folder %s",
                     action, spec.name, config.preset, config.schedule,
                     f", from {Path(config.init_model).name}" if base is not None else "",
                     self.device, self.data.description, self.step, config.steps, config.batch_size,
                     self.dist.world_size, self.run_dir)

    # ------------------------------------------------------------------ data
    def draw(self, step: int, rank: int | None = None) -> Batch:
        """The batch of ``step`` for ``rank`` (default: this process), a pure function of (seed, rank, step)."""
        rank = self.dist.rank if rank is None else rank
        config = self.config
        rng = np.random.default_rng(_seed(config.seed, _DATA_STREAM, rank, step))
        inputs, targets = self.data.draw_patches(config.batch_size, config.patch_size, rng)
        generator = torch.Generator().manual_seed(_seed(config.seed, _NOISE_STREAM, rank, step))
        x0 = torch.from_numpy(targets)
        times = low_discrepancy_times(config.batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        return Batch(torch.from_numpy(inputs), x0, times, noise)

    # ------------------------------------------------------------------ one update
    def train_step(self, batch: Batch) -> tuple[dict[str, float], bool]:
        """One optimiser step on ``batch``; returns the logged values and whether it was skipped.

        A step whose loss or gradient is not finite is skipped (weights unchanged) and
        counted; ``max_bad_steps`` skipped steps in a row raise :class:`TrainingDiverged`.
        """
        config = self.config
        batch = batch.to(self.device)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            terms = self.loss_module(batch.x0, batch.y, batch.t, batch.noise).float()
        self.optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        # gradients are already averaged over processes here, so every rank takes the same decision
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        skipped = not (torch.isfinite(grad_norm) and torch.isfinite(terms).all())
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                        self.step + 1, self.bad_steps)
            if self.bad_steps >= config.max_bad_steps:
                raise TrainingDiverged(
                    f"Training diverged: {self.bad_steps} steps in a row had non-finite losses or gradients "
                    f"(last at step {self.step + 1}); lower the learning rate or check the data for NaN/Inf.")
        else:
            self.bad_steps = 0
            self.optimizer.step()
            self._update_ema()
        self.scheduler.step()
        self.step += 1
        values = terms.detach()
        if self.dist.active:
            import torch.distributed as dist

            dist.all_reduce(values)
            values = values / self.dist.world_size
        logged = {name: float(v) for name, v in zip(LOSS_TERMS, values.cpu())}
        logged.update(lr=float(lr), grad_norm=float(grad_norm))
        return logged, skipped

    @torch.no_grad()
    def _update_ema(self) -> None:
        # the usual warm-up: early weights are forgotten quickly
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1.0 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.model.buffers()):
            ema_buffer.copy_(buffer)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Validation loss and PSNR/SSIM/MAE of the EMA model's sampled mean on the fixed patches.

        Computed on normalised patches (targets in about [−1, 1], PSNR/SSIM/MAE data range 2);
        for QPI the free phase offset is removed first. None without validation data.
        """
        from .metrics import align_offset, mae, psnr, ssim

        if self.data.validation is None:
            return None
        config = self.config
        y_all, x_all = self.data.validation
        generator = torch.Generator().manual_seed(_seed(config.seed, _VALIDATION_STREAM))
        losses, scores = [], {"psnr": [], "ssim": [], "mae": []}
        for first in range(0, len(y_all), config.batch_size):
            y = y_all[first:first + config.batch_size].to(self.device)
            x0 = x_all[first:first + config.batch_size].to(self.device)
            times = low_discrepancy_times(len(y), generator)
            noise = torch.randn(x0.shape, generator=generator)
            losses.append(float(self.ema.loss(x0, y, t=times.to(self.device), noise=noise.to(self.device)).total)
                          * len(y))
            stats = sample_statistics(
                self.ema, y, config.validation_samples,
                SamplingOptions.resolve(self.sampler, steps=config.validation_sample_steps),
                RuntimeOptions(self.autocast_dtype), generator=torch.Generator(self.device).manual_seed(config.seed),
            )
            for prediction, target in zip(stats.mean.cpu().numpy(), x0.cpu().numpy()):
                for p, t in zip(prediction, target):
                    p = align_offset(p, t) if self.data.spec.name == "qpi" else p
                    scores["psnr"].append(psnr(p, t, data_range=2.0))
                    scores["ssim"].append(ssim(p, t, data_range=2.0))
                    # a fixed range: a validation patch may be flat (empty background, uniform phase)
                    scores["mae"].append(mae(p, t, data_range=2.0))
        result = {"loss": sum(losses) / len(y_all)}
        result.update({name: float(np.mean(values)) for name, values in scores.items()})
        return result

    # ------------------------------------------------------------------ files
    def _claim_run_dir(self, resume: bool) -> None:
        """Refuse, before any data is read, a run that would replace the user's files; then lock the run folder."""
        from .io import check_writable_folder

        config, output = self.config, Path(self.config.output)
        has_state = (self.run_dir / STATE_FILE).exists()
        if has_state and not resume and not config.overwrite:
            raise InputError(f"{self.run_dir} holds a checkpoint of an earlier run; resume it (--resume), "
                             "start afresh with --overwrite, or choose another output.")
        if output.exists() and not (resume and has_state) and not config.overwrite:
            raise InputError(f"{output} already exists; use --overwrite to replace it, or choose another output.")
        check_writable_folder(output.parent, "output")
        self._created_run_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(self.run_dir)

    def _release_run_dir(self) -> None:
        if self._lock is None:
            return
        self._lock.unlink(missing_ok=True)
        self._lock = None
        if self._created_run_dir and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # a run refused before it wrote anything leaves nothing behind

    def _prepare_run_dir(self) -> None:
        if self.step == 0 and self.config.overwrite:  # starting afresh: the earlier run is discarded
            for name in (STATE_FILE, BEST_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        for stale in self.run_dir.glob(".*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        write_atomically(self.run_dir / "config.json", (json.dumps(self.config.to_dict(), indent=2) + "\n").encode())

    def _open_logs(self) -> None:
        path = self.run_dir / LOG_FILE
        rows = []
        if self.step > 0 and path.is_file():  # drop rows a killed run logged after its last checkpoint
            with path.open(newline="") as handle:
                # complete rows only (a kill can cut the last line short)
                rows = [row for row in csv.DictReader(handle)
                        if None not in row.values() and row["step"].isdigit() and int(row["step"]) <= self.step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(path, buffer.getvalue().encode())
        self._log_handle = path.open("a", newline="")
        self._log_writer = csv.DictWriter(self._log_handle, LOG_COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)
        except ImportError:  # tensorboard is optional
            self._tensorboard = None

    def _log(self, values: dict[str, float], skipped: bool, validation: dict[str, float] | None,
             elapsed_s: float) -> None:
        if self._log_writer is None:
            return
        row = {"step": self.step, "elapsed_s": f"{elapsed_s:.3f}", "skipped": int(skipped),
               **{name: repr(values[name]) for name in ("lr", *LOSS_TERMS, "grad_norm")}}
        for name, value in (validation or {}).items():
            row[f"val_{name}"] = repr(value)
        self._log_writer.writerow(row)
        self._log_handle.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"train/{name}", value, self.step)
            for name, value in (validation or {}).items():
                self._tensorboard.add_scalar(f"validation/{name}", value, self.step)

    def close(self) -> None:
        """Close the log files, unlock the run folder and leave a process group this trainer joined."""
        self._release_run_dir()
        if self._log_writer is not None:
            self._log_handle.close()
            self._log_writer = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self.dist.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.dist.owns_group = False

    def state_dict(self) -> dict:
        """Everything to resume: tensors, numbers and strings only (``weights_only`` loadable)."""
        return {
            "format": "napari-cvdm-train-state/1",
            "config": json.dumps(self.config.to_dict()),
            "step": self.step,
            "bad_steps": self.bad_steps,
            "elapsed_s": self.elapsed_before_s + self._run_elapsed(),
            "validation": json.dumps(self.validation),
            "best_validation": json.dumps(self.best_validation),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save_state(self) -> Path:
        """Write ``last.pt`` atomically (rank 0)."""
        path = self.run_dir / STATE_FILE
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        write_atomically(path, buffer.getvalue())
        return path

    def load_state(self, path: Path) -> None:
        """Restore a run from ``last.pt``; InputError if it belongs to a differently set-up run."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for damaged files
            raise InputError(f"Cannot resume from {path}: the checkpoint is unreadable ({exc}).") from None
        missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else ["any state"]
        try:
            saved = json.loads(state["config"]) if not missing else None
        except (TypeError, ValueError):
            missing = ["a readable config"]
        if missing or not isinstance(saved, dict):
            raise InputError(f"Cannot resume from {path}: it is not a napari-cvdm training checkpoint "
                             f"(no {', '.join(missing or ['config'])}); move it away to start afresh.")
        changed = [key for key in RESUME_KEYS if saved.get(key) != getattr(self.config, key)]
        if changed:
            key = changed[0]
            raise InputError(f"Cannot resume {self.run_dir}: it was trained with {key} = {saved.get(key)!r}, "
                             f"not {getattr(self.config, key)!r}; use the same settings or another output.")
        try:
            self._restore(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"Cannot resume from {path}: its state does not fit this run "
                             f"({' '.join(str(exc).split())[:200]}).") from None
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        self.elapsed_before_s = float(state["elapsed_s"])
        self.validation = json.loads(state["validation"])
        self.best_validation = json.loads(state["best_validation"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    def model_info(self, stopped: bool = False) -> ModelInfo:
        """The ModelInfo of the current EMA weights (normalisation, pixel size, sampler, summary)."""
        spec, config = self.data.spec, self.config
        training = {
            "steps": self.step, "data": self.data.description, "device": str(self.device),
            "world_size": self.dist.world_size, "batch_size": config.batch_size,
            "effective_batch_size": config.batch_size * self.dist.world_size,
            "patch_size": config.patch_size, "learning_rate": config.learning_rate, "seed": config.seed,
            "precision": "bf16" if self.autocast_dtype is not None else "fp32",
            "wall_time_s": round(self.elapsed_before_s + self._run_elapsed(), 1),
            "validation": self.validation, "best_validation": self.best_validation,
            "validation_split": self.data.split,
            "stopped_early": stopped, "napari_cvdm_version": __version__,
        }
        if self.base_model is not None:
            base_training = self.base_model.training or {}
            training["fine_tuned_from"] = {"file": Path(config.init_model).name,
                                           "steps": base_training.get("steps"), "data": base_training.get("data")}
        return ModelInfo(
            task=spec.name, config=self.model_config,
            input_normalization=spec.input_normalizer.to_dict(),
            target_normalization=spec.target_normalizer.to_dict(),
            input_pixel_size_um=self.data.input_pixel_size_um, upsampling_factor=spec.input_upsample,
            target_unit="rad" if spec.name == "qpi" else "a.u.",
            sampler=dict(self.sampler),
            training=training, description=config.description,
            base={} if self.data.physics_base is None else self.data.physics_base.to_dict(),
        )

    def export(self, path: str | os.PathLike | None = None, stopped: bool = False) -> Path:
        """Write the EMA weights as a model file (default: ``config.output``)."""
        return save_model(path or self.config.output, self.ema, self.model_info(stopped))

    # ------------------------------------------------------------------ loop
    def _run_elapsed(self) -> float:
        return time.monotonic() - self._started if hasattr(self, "_started") else 0.0

    def _stop_requested(self, should_stop: Callable[[], bool] | None) -> bool:
        stop = bool(should_stop()) if should_stop is not None else False
        if self.dist.active:  # every process stops at the same step
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def fit(self, progress: Callable[[TrainProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, preview: bool = False) -> TrainResult:
        """Train until ``config.steps`` or until ``should_stop()``; then save, export and return.

        ``preview``: at every validation, ``progress`` also gets the current reconstruction of
        the held-out data (:meth:`preview`)."""
        config = self.config
        self._started = time.monotonic()
        first_step = self.step
        stopped = False
        saved_at = self.step if self.step > 0 else -1
        try:
            while self.step < config.steps:
                if self._stop_requested(should_stop):
                    stopped = True
                    break
                values, skipped = self.train_step(self.draw(self.step))
                validation, shown = None, None
                elapsed = self.elapsed_before_s + self._run_elapsed()
                if self.dist.is_main:
                    due = config.validate_every and self.step % config.validate_every == 0
                    if due or self.step == config.steps:
                        validation = self._validate_and_keep_best()
                        shown = self.preview() if preview and validation is not None else None
                    # log before checkpointing: a resumed run drops rows past its checkpoint, never misses one
                    self._log(values, skipped, validation, elapsed)
                    if (config.checkpoint_every and self.step % config.checkpoint_every == 0) \
                            or self.step == config.steps:
                        self.save_state()
                        saved_at = self.step
                if progress is not None:
                    rate = (self.step - first_step) / max(self._run_elapsed(), 1e-9)
                    eta = (config.steps - self.step) / rate if rate > 0 else None
                    progress(TrainProgress(self.step, config.steps, values, validation, elapsed, eta, skipped, shown))
            # nothing trained yet (stopped while the data were prepared): nothing replaces the output
            exported = self.step > 0
            path = Path(config.output)
            if self.dist.is_main and exported:
                if saved_at != self.step:
                    self.save_state()
                path = self.export(stopped=stopped)
                if config.calibrate and not stopped:
                    self.calibrate(path)
        finally:
            self.close()
        return TrainResult(path, self.step, stopped, self.validation, self.run_dir, self.best_validation, exported)

    @torch.no_grad()
    def preview(self) -> Preview | None:
        """The EMA model's reconstruction (N = 1, the model's sampler) of the first validation image,
        at most :data:`PREVIEW_SIDE` pixels a side; None without validation images. The input goes
        in on the raw grid it was upsampled from, as a user's does (the data-consistency step needs it)."""
        from .engine import ReconstructionSettings, reconstruct
        from .physics.optics import downsample

        if not self.data.validation_pairs:
            return None
        pair = self.data.validation_pairs[0]
        info = self.model_info()
        factor = int(info.upsampling_factor)
        side = PREVIEW_SIDE // factor
        raw = downsample(pair.input, factor)[:, :side, :side].astype(np.float32)
        settings = ReconstructionSettings(n_samples=1, tile_size=None, device=str(self.device), seed=self.config.seed)
        result = reconstruct(self.ema, info, raw, settings, input_pixel_size_um=info.input_pixel_size_um)
        image = np.asarray(result.mean, np.float32).reshape(pair.target[:, :side * factor, :side * factor].shape)
        source, offset = pair.name, (0, 0)
        for band in self.data.split.get("bands", [])[:1]:  # the band's place in its image
            source = band["name"]
            offset = (band["band_start"], 0) if band["axis"] == 0 else (0, band["band_start"])
        return Preview(image, self.step, source, offset)

    def calibrate(self, path: Path) -> None:
        """Calibrate the exported model on up to 4 validation crops of ≤ 128² (N ≤ 8) and re-save it.

        Skipped (with a log line) without validation images; a failure is logged, never fatal:
        the model is already exported and ``cvdm calibrate`` can do it later.
        """
        from .uncertainty.calibrate import TRAINING_MAX_SAMPLES, calibrate_model, crops, with_calibration
        from .engine import ReconstructionSettings

        if not self.data.validation_pairs:
            log.info("no validation images: the model is not calibrated (run cvdm calibrate on held-out pairs)")
            return
        chosen, info = crops(self.data.validation_pairs), self.model_info()
        settings = ReconstructionSettings(n_samples=min(self.config.n_samples, TRAINING_MAX_SAMPLES),
                                          tile_size=None, device=str(self.device), seed=self.config.seed)
        pixels = sum(p.target.shape[-1] * p.target.shape[-2] for p in chosen)
        held = {"region": "the held-out band(s) of the training images", "image": "the held-out training images",
                "given": "the separate validation pairs", "simulated": "the simulator's validation images"}
        source = (f"{len(chosen)} validation crop(s) ({pixels} pixels) of "
                  f"{held.get(self.data.split.get('kind'), 'the validation images')}")
        try:
            calibration = calibrate_model(self.ema, info, chosen, settings, source=source,
                                          input_pixel_size_um=info.input_pixel_size_um)
        except (CVDMError, ValueError) as error:
            log.warning("calibration on the validation images failed (%s); the model is uncalibrated", error)
            return
        save_model(path, self.ema, with_calibration(info, calibration))
        log.info("%s", calibration.describe())

    def _validate_and_keep_best(self) -> dict[str, float] | None:
        validation = self.validate()
        if validation is None:
            return None
        self.validation = {"step": self.step, **validation}
        if self.best_validation is None or validation["psnr"] > self.best_validation["psnr"]:
            self.best_validation = dict(self.validation)
            save_model(self.run_dir / BEST_FILE, self.ema, self.model_info())
        return validation


def _acquire_lock(run_dir: Path) -> Path:
    """Create ``run_dir/lock`` for this process; InputError if a live run holds it (a dead one's is taken over)."""
    import socket

    path, host = run_dir / LOCK_FILE, socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner_host, _, pid = path.read_text(errors="replace").strip().rpartition(" ")
            if owner_host and owner_host != host:
                raise InputError(f"{run_dir} is in use by a run on {owner_host}; if that run is gone, "
                                 f"delete {path}.") from None
            if pid.isdigit() and _process_alive(int(pid)):
                raise InputError(f"{run_dir} is in use by another training run (process {pid}); "
                                 "wait for it to finish or choose another output.") from None
            log.info("taking over the lock of %s from process %s, which has ended", run_dir, pid or "?")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{host} {os.getpid()}\n")
        return path
    raise InputError(f"Cannot lock {run_dir}: other runs keep taking it.")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def train(config: TrainConfig, pairs: tuple[Sequence, Sequence] | None = None,
          progress: Callable[[TrainProgress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = False,
          validation: tuple[Sequence, Sequence] | None = None, preview: bool = False) -> TrainResult:
    """Train a model as ``config`` says and export it to ``config.output``.

    ``pairs``: optional in-memory ``(inputs, targets)`` lists of numpy arrays (e.g.
    napari layers; SR inputs may be raw widefield at half the target size).
    ``progress(TrainProgress)`` after every step; ``should_stop()`` is polled before
    every step: training then stops, writes ``last.pt``, exports the model and returns
    ``stopped=True``. ``resume``: continue the run in ``config.run_dir`` if it holds a
    checkpoint (else start afresh); without it an existing checkpoint is an InputError.
    ``validation``: separate in-memory validation pairs ``(inputs, targets)``; ``preview``: each
    validation's progress report carries a :class:`Preview` of the held-out data.
    """
    trainer = Trainer(config, pairs=pairs, resume=resume, validation=validation)
    try:
        return trainer.fit(progress, should_stop, preview)
    finally:
        trainer.close()
