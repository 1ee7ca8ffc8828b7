"""Screenshots of the napari-cvdm dock widgets in a real napari window, for the docs.

Run under a display (Xvfb is fine)::

    xvfb-run -a .venv/bin/python scripts/screenshots.py            # writes docs/images/*.png

It opens the plugin's sample data, trains a small SR model from layers with the
Train widget (live loss curve; it fine-tunes the shipped SR model when there is
one), reconstructs a widefield crop and the real cell
defocus stack with the Reconstruct widget, runs ``cvdm predict`` on an SR series
stored as OME-Zarr and opens input and result through napari-ome-zarr, and saves
one window grab per scene (``--scenes`` picks some):

- ``train``: ``docs/images/train_widget.png``
- ``sr``: ``docs/images/reconstruct_sr.png``
- ``qpi``: ``docs/images/reconstruct_qpi.png``
- ``ome-zarr``: ``docs/images/ome_zarr_sr_series.png`` (needs napari-ome-zarr), and the
  scale and translation of each layer as napari placed it

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


def train_quick_model(task: str, workdir: Path, steps: int) -> Path:
    """A tiny model of ``task`` trained on simulated pairs (CPU, for the screenshots only, without a shipped one)."""
    from napari_cvdm.train import TrainConfig, train

    config = TrainConfig(task=task, preset="tiny", patch_size=64, batch_size=8, steps=steps, learning_rate=2e-3,
                         warmup_steps=10, validate_every=0, checkpoint_every=0, device="cpu", ema_decay=0.9,
                         simulated_images=16, simulated_size=128, validation_fraction=0.0, sample_steps=10,
                         n_samples=4, output=str(workdir / f"{task}_simulated.safetensors"))
    return Path(train(config).model_path)


def train_scene(viewer, app, args, workdir: Path) -> None:
    """The Train widget fine-tuning on simulated pairs given as layers, with its live loss curve."""
    from napari_cvdm.data import simulate_sr

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
    viewer.window.remove_dock_widget("all")


def reconstruct_widget(viewer, model: Path, layer: str):
    """The Reconstruct widget set up for a quick CPU run of ``model`` on ``layer`` (N = 4, 8 steps)."""
    _, reconstruct = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    reconstruct.select_model(model)
    reconstruct.input_combo.setCurrentText(layer)
    reconstruct.samples_spin.setValue(4)
    reconstruct.steps_spin.setValue(8)
    reconstruct.tile_spin.setValue(128)
    reconstruct.device_combo.setCurrentText("cpu")
    return reconstruct


def show_grid(viewer, app, keep: tuple[str, ...], path: Path) -> None:
    show_only(viewer, keep)
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (2, 3)
    viewer.reset_view()
    grab(viewer, app, path)
    viewer.canvas.grid.enabled = False


def sr_scene(viewer, app, args, workdir: Path) -> None:
    """The Reconstruct widget on a widefield crop of the SR sample: every result layer in a grid."""
    viewer.open_sample("napari-cvdm", "sr_pair")
    widefield = viewer.layers["widefield (simulated microtubules)"]
    camera = widefield.scale[-1]
    crop = viewer.add_image(widefield.data[96:160, 96:160], name="widefield crop", scale=widefield.scale,
                            translate=(96 * camera, 96 * camera))
    for layer in list(viewer.layers):
        if layer is not crop:
            viewer.layers.remove(layer)
    reconstruct = reconstruct_widget(viewer, shipped_model("sr") or train_quick_model("sr", workdir, args.steps),
                                     crop.name)
    reconstruct.start()
    wait(reconstruct, app)
    show_grid(viewer, app, ("crop", "CVDM mean", "CVDM variance", "CVDM ± error (95 %)", "CVDM γ map",
                            "CVDM data consistency"), args.out / "reconstruct_sr.png")
    viewer.window.remove_dock_widget("all")


def qpi_scene(viewer, app, args, workdir: Path) -> None:
    """The Reconstruct widget on a 128 × 128 crop around the real cell (keeps the CPU run short)."""
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    stack, phase = viewer.layers["cell defocus stack (±1 µm)"], viewer.layers["cell phase (rad)"]
    rows, cols = slice(124, 252), slice(147, 275)
    pixel = phase.scale[-1]
    offset = (rows.start * pixel, cols.start * pixel)
    viewer.layers.clear()
    viewer.add_image(phase.data[rows, cols], name="cell phase (rad)", scale=phase.scale, translate=offset,
                     colormap="viridis")
    viewer.add_image(stack.data[:, rows, cols], name="cell defocus stack", scale=stack.scale,
                     translate=(stack.translate[0], *offset), metadata=stack.metadata)
    model = shipped_model("qpi") or train_quick_model("qpi", workdir, args.steps)
    reconstruct = reconstruct_widget(viewer, model, "cell defocus stack")
    reconstruct.start()
    wait(reconstruct, app)
    show_grid(viewer, app, ("cell phase (rad)", "cell defocus stack", "CVDM mean", "CVDM variance",
                            "CVDM ± error (95 %)", "CVDM γ map"), args.out / "reconstruct_qpi.png")
    viewer.window.remove_dock_widget("all")


def ome_zarr_scene(viewer, app, args, workdir: Path) -> None:
    """``cvdm predict`` on an SR series (T, 512, 512) stored as OME-Zarr, input and mean opened through
    napari-ome-zarr; prints each layer's scale and translation beside what the store holds."""
    import zarr
    from ome_zarr.writer import write_image

    from napari_cvdm.cli import main as cvdm
    from napari_cvdm.data import simulate_sr

    rng = np.random.default_rng(4)
    frames = [simulate_sr(rng, 1024, kind="microtubule") for _ in range(args.frames)]
    camera = frames[0].camera_pixel_um
    store = workdir / "series.ome.zarr"
    write_image(np.stack([f.widefield for f in frames]).astype(np.float32), zarr.open_group(store, mode="w"),
                scale_factors=(2,), axes="tyx", scale={"t": 1.0, "y": camera, "x": camera},
                axes_units={"y": "micrometer", "x": "micrometer"})
    sr_model = shipped_model("sr") or train_quick_model("sr", workdir, args.steps)
    code = cvdm(["predict", str(store), "--model", str(sr_model), "--out", str(workdir / "out"), "--format", "ome-zarr",
                 "--n-samples", "2", "--device", "cpu"])
    if code != 0:
        raise RuntimeError(f"cvdm predict exited {code}")
    mean = workdir / "out" / "series_mean.ome.zarr"
    for path, name in ((store, "widefield series"), (mean, "CVDM mean")):
        layers = viewer.open(str(path), plugin="napari-ome-zarr")
        layers[0].name = name
        held = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
        print(f"{name}: napari scale {tuple(layers[0].scale)}, translate {tuple(layers[0].translate)}, "
              f"affine translation {tuple(layers[0].affine.translate)}; the store: {held['coordinateTransformations']}")
    viewer.canvas.overlays.scale_bar.visible = True
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 2)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 3  # the centre, where camera and output pixels can be told apart
    grab(viewer, app, args.out / "ome_zarr_sr_series.png")
    viewer.canvas.grid.enabled = False


SCENES = {"train": train_scene, "sr": sr_scene, "qpi": qpi_scene, "ome-zarr": ome_zarr_scene}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the quick models")
    parser.add_argument("--scenes", nargs="+", choices=tuple(SCENES), default=list(SCENES))
    parser.add_argument("--frames", type=int, default=2, help="frames of the OME-Zarr SR series")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    import napari
    from qtpy.QtWidgets import QApplication

    workdir = Path(tempfile.mkdtemp(prefix="cvdm-screenshots-"))
    viewer = napari.Viewer(title="napari-cvdm")
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    for scene in args.scenes:
        viewer.layers.clear()
        SCENES[scene](viewer, app, args, workdir)
    viewer.close()


if __name__ == "__main__":
    main()
