"""What the Train widget's preview costs, and the GUI's longest stall while it trains with the preview on.

    xvfb-run -a .venv/bin/python benchmarks/train_preview.py

1. Cost. One simulated 512² SR pair (microtubules, the shipped model's pixel size); the shipped SR
   model fine-tuned with the widget's defaults (batch 8, 64² patches, a held-out band). In one
   process: the mean time of a training step (over ``--steps``), of a validation and of a preview
   (over ``--repeats``). The slowdown of a run by the preview is ``preview / (every × step +
   validation)``, printed for the widget's ``validate_every`` and for ``--every``.
2. Stall. A napari viewer with the same pair as layers and the Train widget fine-tuning for
   ``--gui-steps`` steps, validating (and previewing) every ``--gui-every`` steps. A 10 ms timer on
   the GUI thread records the thread's CPU time; the longest CPU stretch between two ticks is the
   stall (CPU, not wall time: on a shared machine a wall-clock gap measures the machine).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401 - torch before Qt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cvdm.config import TrainConfig  # noqa: E402
from napari_cvdm.data.simulate import simulate_sr  # noqa: E402
from napari_cvdm.train import Trainer  # noqa: E402

MODEL = ROOT / "models" / "cvdm-sr-residual.safetensors"


def timed(function, repeats: int) -> float:
    """Mean wall time (s) of ``repeats`` calls."""
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def cost(sample, args) -> dict:
    """Seconds per training step, validation and preview of the widget's fine-tuning run."""
    output = Path(tempfile.mkdtemp()) / "tuned.safetensors"
    config = TrainConfig(init_model=str(MODEL), output=str(output), device="cpu", steps=10 * args.steps)
    trainer = Trainer(config, pairs=([sample.widefield], [sample.target]))
    try:
        trainer.train_step(trainer.draw(0))  # warm-up
        step = timed(lambda: trainer.train_step(trainer.draw(trainer.step)), args.steps)
        validation = timed(trainer.validate, args.repeats)
        preview = timed(trainer.preview, args.repeats)
    finally:
        trainer.close()
    slowdown = {every: preview / (every * step + validation) for every in (config.validate_every, args.every)}
    return {"step_s": step, "validation_s": validation, "preview_s": preview, "slowdown": slowdown}


def stall(sample, args) -> float:
    """Longest GUI-thread CPU stretch (s) while the widget fine-tunes with the preview on."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cvdm._widgets._train import TrainWidget

    viewer = napari.Viewer(show=False)
    camera, fine = sample.camera_pixel_um, sample.target_pixel_um
    viewer.add_image(sample.widefield, name="widefield", scale=(camera, camera))
    viewer.add_image(sample.target, name="target", scale=(fine, fine))
    widget = TrainWidget(viewer)
    assert widget.base_model is not None and widget.preview_check.isChecked()  # the shipped model, preselected
    widget.input_layer_combo.setCurrentText("widefield")
    widget.target_layer_combo.setCurrentText("target")
    widget.steps_spin.setValue(args.gui_steps)
    widget.validate_every_spin.setValue(args.gui_every)
    widget.device_combo.setCurrentText("cpu")
    widget.output_edit.setText(str(Path(tempfile.mkdtemp()) / "tuned.safetensors"))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.thread_time()))
    timer.start()
    assert widget.start()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.002)
    timer.stop()
    previews = [layer.name for layer in viewer.layers if layer.name.startswith("CVDM training preview")]
    print(f"preview layer: {previews}; {widget.status_label.text()}")
    viewer.close()
    return float(np.diff(ticks).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--repeats", type=int, default=3, help="validations and previews timed")
    parser.add_argument("--every", type=int, default=100, help="a shorter validation interval to report")
    parser.add_argument("--gui-steps", type=int, default=12)
    parser.add_argument("--gui-every", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-gui", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sample = simulate_sr(np.random.default_rng(0), 512, kind="microtubule")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    result = cost(sample, args)
    print(f"step {result['step_s']:.3f} s, validation {result['validation_s']:.2f} s, "
          f"preview {result['preview_s']:.2f} s")
    for every, slowdown in result["slowdown"].items():
        print(f"validating every {every} steps: the preview slows the run by {100 * slowdown:.2f} %")
    if not args.skip_gui:
        print(f"longest GUI-thread CPU stretch with the preview on: {stall(sample, args):.3f} s")


if __name__ == "__main__":
    main()
