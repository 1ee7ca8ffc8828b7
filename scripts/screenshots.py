"""Screenshots of the napari-cvdm dock widgets in a real napari window, for the docs.

Run under a display (Xvfb is fine)::

    xvfb-run -a .venv/bin/python scripts/screenshots.py            # writes docs/images/*.png

It opens the plugin's sample data, trains a small SR model from layers with the
Train widget (live loss curve; it fine-tunes the shipped SR model when there is
one), reconstructs a widefield crop and the real cell
defocus stack with the Reconstruct widget, and saves one window grab per step:

- ``docs/images/train_widget.png``
- ``docs/images/reconstruct_sr.png``
- ``docs/images/reconstruct_qpi.png``

Models shipped in ``models/`` are used when there is one for the task; otherwise a
tiny model is trained here on the CPU for ``--steps`` steps, which shows the
widgets working but not the quality of a properly trained model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (import torch before Qt)

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def wait(widget, app, timeout_s: float = 1800) -> None:
    """Process Qt events until the widget's background task has finished."""
    deadline = time.monotonic() + timeout_s
    while widget.running:
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise TimeoutError("the background task did not finish in time")
    for _ in range(20):  # let the canvas redraw
        app.processEvents()
        time.sleep(0.02)


def grab(viewer, app, path: Path) -> None:
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path}")


def shipped_model(task: str) -> Path | None:
    """The shipped default (residual) model of ``task``, else any shipped model of it, else None."""
    from napari_cvdm._widgets import MODEL_REGISTRY

    shipped = [entry.path for entry in MODEL_REGISTRY.entries()
               if entry.origin == "shipped" and entry.info is not None and entry.info.task == task]
    return next((path for path in shipped if "residual" in Path(path).name), shipped[0] if shipped else None)


def show_only(viewer, keep: tuple[str, ...]) -> None:
    """Make visible the layers whose names end with one of ``keep`` (the grid shows visible layers only)."""
    for layer in viewer.layers:
        layer.visible = layer.name.endswith(keep)


def train_quick_qpi_model(path: Path, steps: int) -> Path:
    """A tiny QPI model trained on simulated defocus stacks (CPU, for the screenshot only)."""
    from napari_cvdm.train import TrainConfig, train

    config = TrainConfig(task="qpi", preset="tiny", patch_size=64, batch_size=8, steps=steps, learning_rate=2e-3,
                         warmup_steps=10, validate_every=0, checkpoint_every=0, device="cpu", ema_decay=0.9,
                         simulated_images=16, simulated_size=128, validation_fraction=0.0, sample_steps=10,
                         n_samples=4, output=str(path))
    return Path(train(config).model_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the quick models")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cvdm.data import simulate_sr

    workdir = Path(tempfile.mkdtemp(prefix="cvdm-screenshots-"))
    viewer = napari.Viewer(title="napari-cvdm")
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()

    # ---------------------------------------------------------------- Train widget
    rng = np.random.default_rng(1)
    samples = [simulate_sr(rng, 256, kind="microtubule") for _ in range(6)]
    camera, fine = samples[0].camera_pixel_um, samples[0].target_pixel_um
    viewer.add_image(np.stack([s.target for s in samples]), name="training SIM", scale=(1, fine, fine),
                     translate=(0, -fine / 2, -fine / 2), visible=False)
    viewer.add_image(np.stack([s.widefield for s in samples]), name="training widefield",
                     scale=(1, camera, camera))
    _, trainer = viewer.window.add_plugin_dock_widget("napari-cvdm", "Train")
    trainer.input_layer_combo.setCurrentText("training widefield")
    trainer.target_layer_combo.setCurrentText("training SIM")
    base = shipped_model("sr")
    if base is not None:  # fine-tune the shipped model, as a user with their own pairs would
        trainer.base_combo.setCurrentIndex(trainer.base_index(base))
    else:
        trainer.preset_combo.setCurrentText("tiny")
    trainer.patch_spin.setValue(64)
    trainer.batch_spin.setValue(8)
    trainer.steps_spin.setValue(args.steps)
    trainer.lr_spin.setValue(0.002 if base is None else 0.0002)
    trainer.validation_spin.setValue(0.2)
    trainer.validate_every_spin.setValue(max(1, args.steps // 3))
    trainer.device_combo.setCurrentText("cpu")
    trainer.output_edit.setText(str(workdir / "sr_from_layers.safetensors"))
    trainer.start()
    wait(trainer, app)
    grab(viewer, app, args.out / "train_widget.png")
    sr_model = shipped_model("sr") or Path(trainer.last_result.model_path)
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()

    # ---------------------------------------------------------------- Reconstruct: SR
    viewer.open_sample("napari-cvdm", "sr_pair")
    widefield = viewer.layers["widefield (simulated microtubules)"]
    crop = viewer.add_image(widefield.data[96:160, 96:160], name="widefield crop", scale=widefield.scale,
                            translate=(96 * camera, 96 * camera))
    for layer in list(viewer.layers):
        if layer is not crop:
            viewer.layers.remove(layer)
    _, reconstruct = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    reconstruct.select_model(sr_model)
    reconstruct.input_combo.setCurrentText(crop.name)
    reconstruct.samples_spin.setValue(4)
    reconstruct.steps_spin.setValue(8)
    reconstruct.tile_spin.setValue(128)
    reconstruct.device_combo.setCurrentText("cpu")
    reconstruct.start()
    wait(reconstruct, app)
    show_only(viewer, ("crop", "CVDM mean", "CVDM variance", "CVDM ± error (95 %)", "CVDM γ map",
                       "CVDM data consistency"))
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (2, 3)
    viewer.reset_view()
    grab(viewer, app, args.out / "reconstruct_sr.png")

    # ---------------------------------------------------------------- Reconstruct: QPI on the real cell
    viewer.layers.clear()
    viewer.canvas.grid.enabled = False
    qpi_model = shipped_model("qpi") or train_quick_qpi_model(workdir / "qpi_simulated.safetensors", args.steps)
    reconstruct.select_model(qpi_model)
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    # A 128 × 128 crop around the cell keeps the CPU run short.
    stack, phase = viewer.layers["cell defocus stack (±1 µm)"], viewer.layers["cell phase (rad)"]
    rows, cols = slice(124, 252), slice(147, 275)
    pixel = phase.scale[-1]
    offset = (rows.start * pixel, cols.start * pixel)
    viewer.layers.clear()
    viewer.add_image(phase.data[rows, cols], name="cell phase (rad)", scale=phase.scale, translate=offset,
                     colormap="viridis")
    viewer.add_image(stack.data[:, rows, cols], name="cell defocus stack", scale=stack.scale,
                     translate=(stack.translate[0], *offset), metadata=stack.metadata)
    reconstruct.input_combo.setCurrentText("cell defocus stack")
    reconstruct.samples_spin.setValue(4)
    reconstruct.steps_spin.setValue(8)
    reconstruct.tile_spin.setValue(128)
    reconstruct.start()
    wait(reconstruct, app)
    show_only(viewer, ("cell phase (rad)", "cell defocus stack", "CVDM mean", "CVDM variance", "CVDM ± error (95 %)",
                       "CVDM γ map"))
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (2, 3)
    viewer.reset_view()
    grab(viewer, app, args.out / "reconstruct_qpi.png")
    viewer.close()


if __name__ == "__main__":
    main()
