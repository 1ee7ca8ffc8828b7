"""How long the GUI thread works without returning to its event loop while the Reconstruct widget shows
a 1024² result (the goal: under 0.25 s).

    xvfb-run -a .venv/bin/python benchmarks/gui_stall.py --repeats 5

A 512² widefield layer, the shipped SR residual model, N = 4 in rounds of one sample. The engine is
replaced by a stand-in that returns seeded 1024² rounds at once, so the figure is the display's
alone: the preview, each round's mean / variance / γ layers, the final result. A 10 ms timer on the GUI
thread records the thread's CPU time at every tick; the longest CPU stretch between two ticks is the
stall (CPU, not wall time: on a shared machine a wall-clock gap measures the machine). Each repeat
starts from a viewer without result layers, so that every repeat adds its layers anew.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401 - torch before Qt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cvdm import engine  # noqa: E402

MODEL = ROOT / "models" / "cvdm-sr-residual.safetensors"


def stand_in_engine(model, info, image, settings, progress=None, should_stop=None, *, on_partial=None, **_):
    """``reconstruct`` returning seeded rounds of ``settings.max_batch`` samples on the 2× grid."""
    factor, n = int(info.upsampling_factor), settings.n_samples
    shape = (image.shape[-2] * factor, image.shape[-1] * factor)
    samples = 5 + np.random.default_rng(settings.seed).standard_normal((n, *shape)).astype(np.float32)
    batch = settings.max_batch or n
    last = None
    for done in range(batch, n + batch, batch):
        part = samples[:min(done, n)]
        variance = part.var(axis=0, ddof=1) if len(part) > 1 else np.zeros(shape, np.float32)
        last = engine.Reconstruction(mean=part.mean(axis=0), variance=variance,
                                     gamma_map=np.full(shape, 0.5, np.float32), samples=None,
                                     upsampling_factor=factor, pixel_size_um=None, unit=info.target_unit,
                                     metadata={"samples_done": len(part)})
        progress(done, n)
        if done < n:
            on_partial(last)
    return last


class StallMeter:
    def __init__(self):
        from qtpy.QtCore import QTimer
        self.cpu: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.cpu.append(time.thread_time()))

    def longest_s(self) -> float:
        return float(np.diff(self.cpu).max())


def one_run(viewer, widget, app) -> float:
    for layer in [layer for layer in viewer.layers if "CVDM" in layer.name]:
        viewer.layers.remove(layer)
    for _ in range(20):
        app.processEvents()
    gc.collect()
    meter = StallMeter()
    meter.cpu.append(time.thread_time())
    meter.timer.start()
    assert widget.start()
    deadline = time.perf_counter() + 120
    while (widget.running or widget._staged.busy) and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.002)
    for _ in range(20):
        app.processEvents()
    meter.timer.stop()
    meter.cpu.append(time.thread_time())
    return meter.longest_s()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    engine.reconstruct = stand_in_engine
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(np.random.default_rng(4).random((512, 512)).astype(np.float32) * 100, name="wf")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget.select_model(MODEL)
    widget.input_combo.setCurrentText("wf")
    widget.samples_spin.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    print(f"device: {platform.processor() or platform.machine()}, napari {napari.__version__}, "
          f"1024² result layers, N = 4", flush=True)
    stalls = [one_run(viewer, widget, app) for _ in range(args.repeats)]
    print("longest GUI-thread CPU stretch per run (s): " + ", ".join(f"{s:.3f}" for s in stalls))
    print(f"median {np.median(stalls):.3f} s, worst {max(stalls):.3f} s (goal 0.25 s)", flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
