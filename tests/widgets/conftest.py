"""Fixtures for the napari widget tests: tiny model files, captured notifications, registry clean-up."""

from __future__ import annotations

import time

import napari.utils.notifications
import numpy as np
import pytest
import torch

from napari_cvdm.checkpoint import ModelInfo, save_model
from napari_cvdm.model import CVDM, ModelConfig

SR_NORMS = {"input_normalization": {"mode": "percentile", "low_pct": 0.1, "high_pct": 99.9},
            "target_normalization": {"mode": "percentile", "low_pct": 0.1, "high_pct": 99.9}}
QPI_NORMS = {"input_normalization": {"mode": "mean"},
             "target_normalization": {"mode": "fixed", "low": [0.0], "high": [3.5]}}


def write_tiny_model(path, task: str, steps: int = 2, n_samples: int = 2, residual: bool = False):
    """Save an untrained tiny CVDM for ``task`` ("sr" or "qpi") and return its path.

    ``residual``: the residual formulation (QPI: a TIE "physics" base; SR: a "predictor" network).
    """
    from napari_cvdm.residual import TIEBase

    torch.manual_seed(0)
    base = ("physics" if task == "qpi" else "predictor") if residual else "none"
    config = ModelConfig(x_channels=1, y_channels=2 if task == "qpi" else 1, preset="tiny", base=base)
    model = CVDM(config)
    sampler = {"name": "dpm_solver_2m", "steps": steps, "n_samples": n_samples}
    if task == "qpi":
        tie = TIEBase(10.0, 0.521, 1.0, 0.21, 1.75).to_dict() if residual else {}
        info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                         sampler=sampler, training={"data": "nothing (test model)"}, base=tie, **QPI_NORMS)
    else:
        info = ModelInfo(task="sr", config=config, input_pixel_size_um=0.0626, upsampling_factor=2,
                         sampler=sampler, training={"data": "nothing (test model)"}, **SR_NORMS)
    return save_model(path, model, info)


@pytest.fixture
def tiny_model_writer():
    """``write(path, task)``: save an untrained tiny model file (see :func:`write_tiny_model`)."""
    return write_tiny_model


@pytest.fixture
def sr_model_path(tmp_path):
    return write_tiny_model(tmp_path / "tiny_sr.safetensors", "sr")


@pytest.fixture
def qpi_model_path(tmp_path):
    return write_tiny_model(tmp_path / "tiny_qpi.safetensors", "qpi")


class NotificationLog:
    """Messages passed to napari's show_error / show_warning / show_info, by severity."""

    def __init__(self):
        self.error: list[str] = []
        self.warning: list[str] = []
        self.info: list[str] = []


@pytest.fixture
def notifications(monkeypatch):
    log = NotificationLog()
    for severity in ("error", "warning", "info"):
        monkeypatch.setattr(napari.utils.notifications, f"show_{severity}", getattr(log, severity).append)
    return log


@pytest.fixture(autouse=True)
def clean_registry():
    """Forget models that a test added to the shared registry (their files are temporary)."""
    from napari_cvdm._widgets import MODEL_REGISTRY

    before = {entry.path for entry in MODEL_REGISTRY.entries()}
    yield MODEL_REGISTRY
    for entry in MODEL_REGISTRY.entries():
        if entry.path not in before:
            MODEL_REGISTRY.remove(entry.path)


@pytest.fixture
def wait_idle(qtbot):
    """``wait_idle(widget)``: wait until a widget's background task has finished and been handled."""

    def wait(widget, timeout=60_000):
        qtbot.waitUntil(lambda: not widget.running, timeout=timeout)

    return wait


class GuiStallMeter:
    """Ticks of a 10 ms timer on the GUI thread, each with the wall time and the GUI thread's CPU time.

    ``longest_stretch_s``: the most CPU time the GUI thread spent between two ticks, i.e. the longest
    it worked without returning to its event loop. CPU time, not wall time: on a shared, loaded
    machine a wall-clock gap is several times the work done in it and measures the machine.
    """

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.ticks: list[tuple[float, float]] = []
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.ticks.append((time.perf_counter(), time.thread_time()))

    def start(self) -> None:
        self._tick()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._tick()

    def longest_stretch_s(self, until: float | None = None) -> float:
        """Longest GUI-thread CPU stretch (s), over ticks up to wall time ``until`` (all when None)."""
        cpu = [c for t, c in self.ticks if until is None or t <= until]
        return float(np.diff(cpu).max())


@pytest.fixture
def stall_meter():
    meter = GuiStallMeter()
    yield meter
    meter.stop()
