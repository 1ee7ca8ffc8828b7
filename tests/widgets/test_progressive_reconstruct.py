"""Reconstruct widget, issue 17: a preview first, the layers refined after every round of samples, Cancel
keeps what was computed, and showing the layers never stalls the GUI.

The engine is replaced by :class:`FakeEngine`, which follows the documented API of
``reconstruct(..., on_partial=..., on_base=...)`` (the first plane's base, rounds of ``settings.max_batch``
samples, ``Cancelled.partial``)
and can hold after a round, so that the test sees the layers between rounds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_cvdm import engine
from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm.preview import BASE_KIND, TIE_KIND, UPSAMPLED_KIND
from napari_cvdm.errors import Cancelled
from napari_cvdm.physics import upsample
from napari_cvdm.physics.tie import fft_tie

pytestmark = pytest.mark.gui


class FakeEngine:
    """``reconstruct`` in rounds of ``settings.max_batch`` seeded Gaussian samples (5 + noise) on the output grid.

    ``hold_after``: sample counts after which it waits for :meth:`release` (0: before the first round);
    ``step_s``: seconds per denoising step (``settings.steps`` per round).
    """

    def __init__(self, hold_after=(), step_s=0.0):
        self.hold_after, self.step_s = set(hold_after), step_s
        self.holding, self._release = threading.Event(), threading.Event()
        self.settings: list = []
        self.entered_at: list[float] = []

    def release(self):
        self.holding.clear()
        self._release.set()

    def __call__(self, model, info, image, settings, progress=None, should_stop=None, *, on_partial=None,
                 on_base=None, **_):
        self.entered_at.append(time.perf_counter())
        if on_base is not None and model.config.base != "none":  # the engine's own base, as the engine reports it
            base = engine.reconstruct_base(model, info, image, device="cpu")
            on_base(0, base.reshape(-1, *base.shape[-2:])[0])
        self.settings.append(settings)
        factor, n = int(info.upsampling_factor), settings.n_samples
        shape = (image.shape[-2] * factor, image.shape[-1] * factor)
        samples = 5 + np.random.default_rng(settings.seed).standard_normal((n, *shape)).astype(np.float32)
        rounds = list(range(0, n, settings.max_batch or n))
        total, step, last = len(rounds) * settings.steps, 0, None
        self._hold_if(0)
        for first in rounds:
            for _ in range(settings.steps):
                if should_stop is not None and should_stop():
                    error = Cancelled("stopped")
                    error.partial = last
                    raise error
                time.sleep(self.step_s)
                step += 1
                progress(step, total)
            done = min(first + (settings.max_batch or n), n)
            last = self.result(info, samples[:done])
            on_partial(last)
            self._hold_if(done)
        return last

    def _hold_if(self, done: int) -> None:
        if done in self.hold_after:
            self._release.clear()
            self.holding.set()
            assert self._release.wait(30)

    @staticmethod
    def result(info, samples) -> engine.Reconstruction:
        variance = samples.var(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(samples[0])
        return engine.Reconstruction(mean=samples.mean(axis=0), variance=variance,
                                     gamma_map=np.full_like(samples[0], 0.5), samples=None,
                                     upsampling_factor=int(info.upsampling_factor), pixel_size_um=None,
                                     unit=info.target_unit, metadata={"samples_done": len(samples)})


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)  # shown: adding a layer then builds its visual, as for a user


def open_widget(viewer, model_path, input_name, samples=4, steps=2) -> ReconstructWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget.select_model(model_path)
    widget.input_combo.setCurrentText(input_name)
    widget.samples_spin.setValue(samples)
    widget.steps_spin.setValue(steps)
    widget.device_combo.setCurrentText("cpu")
    return widget


def mean_layer(viewer, input_name):
    found = [layer for layer in viewer.layers if layer.name.startswith(f"{input_name} CVDM mean")]
    return found[0] if found else None


def wait_shown(qtbot, widget, viewer, input_name, samples_done):
    """Until the mean layer holds ``samples_done`` samples and no layer change is pending."""
    def shown():
        layer = mean_layer(viewer, input_name)
        return (not widget._staged.busy and layer is not None
                and layer.metadata["cvdm"].get("samples_done") == samples_done)
    qtbot.waitUntil(shown, timeout=20_000)


def test_sr_preview_then_the_mean_and_variance_refine_round_by_round(viewer, sr_model_path, notifications,
                                                                     monkeypatch, qtbot, wait_idle):
    fake = FakeEngine(hold_after={0, 1, 2})
    monkeypatch.setattr(engine, "reconstruct", fake)
    image = np.random.default_rng(0).random((24, 20)).astype(np.float32) * 100
    viewer.add_image(image, name="wf")
    widget = open_widget(viewer, sr_model_path, "wf", samples=4)
    assert widget.start()

    # The paper-formulation SR model has no base: the upsampled input is shown first.
    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)  # before the first sample
    qtbot.waitUntil(lambda: mean_layer(viewer, "wf") is not None and not widget._staged.busy, timeout=10_000)
    preview = mean_layer(viewer, "wf")
    assert preview.name == f"wf CVDM mean (preview: {UPSAMPLED_KIND})"
    assert preview.metadata["cvdm"]["preview"] == UPSAMPLED_KIND
    np.testing.assert_allclose(preview.data, upsample(image, 2), rtol=1e-5)
    fake.release()

    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)  # one sample drawn (CPU: rounds of 1)
    wait_shown(qtbot, widget, viewer, "wf", 1)
    assert fake.settings[0].max_batch == 1
    mean = viewer.layers["wf CVDM mean"]
    assert mean is preview and mean.metadata["cvdm"]["preview"] is None and mean.visible
    assert "wf CVDM variance" not in viewer.layers  # one sample has no spread
    assert "1 / 4 samples" in widget.status_label.text()
    fake.release()

    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)
    wait_shown(qtbot, widget, viewer, "wf", 2)
    variance = viewer.layers["wf CVDM variance"]
    assert variance.metadata["cvdm"]["samples_done"] == 2 and not variance.visible
    assert "2 / 4 samples" in widget.status_label.text()
    fake.release()

    wait_idle(widget)
    assert notifications.error == []
    assert widget.status_label.text().startswith("Done: wf CVDM mean")
    assert mean.metadata["cvdm"]["samples_done"] == 4 and viewer.layers["wf CVDM variance"] is variance
    rng_samples = 5 + np.random.default_rng(0).standard_normal((4, 48, 40)).astype(np.float32)
    np.testing.assert_allclose(mean.data, rng_samples.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(variance.data, rng_samples.var(axis=0, ddof=1), rtol=1e-5)
    # The mean stays on top; the other outputs are added hidden below it.
    assert viewer.layers[-1] is mean
    assert not viewer.layers["wf CVDM γ map"].visible


@pytest.mark.parametrize("task, residual, expected", [
    ("qpi", True, [TIE_KIND, BASE_KIND]),         # the classical preview first, then the engine's base
    ("sr", True, [UPSAMPLED_KIND, BASE_KIND]),
    ("qpi", False, [TIE_KIND]),                   # no base (paper formulation): the classical preview only
])
def test_previews_in_order_before_the_first_sample(viewer, tiny_model_writer, tmp_path, notifications, monkeypatch,
                                                   qtbot, wait_idle, task, residual, expected):
    fake = FakeEngine(hold_after={0})
    monkeypatch.setattr(engine, "reconstruct", fake)
    model_path = tiny_model_writer(tmp_path / f"{task}.safetensors", task, residual=residual)
    if task == "qpi":
        viewer.open_sample("napari-cvdm", "cell_defocus_stack")
        layer = viewer.layers["cell defocus stack (±1 µm)"]
        layer.data = layer.data[:, :64, :48]
    else:
        layer = viewer.add_image(np.random.default_rng(1).random((24, 20)).astype(np.float32) * 100, name="wf")
    widget = open_widget(viewer, model_path, layer.name)
    seen = []
    widget._staged.put = _recording(widget._staged.put, lambda: mean_layer(viewer, layer.name), seen)
    assert widget.start()
    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)  # every preview reported, no sample yet
    # the GUI shows the previews in staged turns; a loaded 2-core machine needs more than 10 s for them
    qtbot.waitUntil(lambda: len(seen) >= len(expected) and not widget._staged.busy, timeout=30_000)
    fake.release()
    wait_idle(widget)
    assert notifications.error == []
    assert [kind for kind, _ in seen] == expected
    info, image = widget.selected_entry().info, np.asarray(layer.data)
    model = widget.models.get(model_path.resolve(), "cpu")
    truth = {BASE_KIND: lambda: engine.reconstruct_base(model, info, image, device="cpu"),
             UPSAMPLED_KIND: lambda: upsample(image, 2),
             TIE_KIND: lambda: fft_tie(image, 1.0, 0.521, layer.scale[-1], boundary="mirror") + 1.75}
    for kind, data in seen:
        np.testing.assert_allclose(data, truth[kind](), rtol=1e-4, atol=1e-5)


def _recording(put, find_mean, seen):
    """Wrap StagedUpdates.put so that each preview reaching the mean layer is recorded as ``(kind, data)``."""
    def recording_put(key, piece):
        def run():
            piece()
            layer = find_mean()
            kind = layer.metadata["cvdm"].get("preview") if layer is not None else None
            if kind and (not seen or seen[-1][0] != kind):
                seen.append((kind, np.array(layer.data)))
        put(key, run)
    return recording_put


def test_cancel_keeps_the_mean_and_variance_of_the_finished_rounds(viewer, sr_model_path, notifications,
                                                                   monkeypatch, qtbot, wait_idle):
    fake = FakeEngine(hold_after={2})
    monkeypatch.setattr(engine, "reconstruct", fake)
    viewer.add_image(np.random.default_rng(2).random((16, 16)).astype(np.float32), name="wf")
    widget = open_widget(viewer, sr_model_path, "wf", samples=8)
    assert widget.start()
    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)
    widget.cancel_button.click()
    fake.release()  # the next step sees the stop flag
    wait_idle(widget)
    assert notifications.error == []
    assert notifications.info == ["Cancelled after 2 of 8 samples: the layers keep the mean and variance of those 2."]
    assert widget.status_label.text() == notifications.info[0]
    mean, variance = viewer.layers["wf CVDM mean"], viewer.layers["wf CVDM variance"]
    assert mean.metadata["cvdm"]["samples_done"] == variance.metadata["cvdm"]["samples_done"] == 2
    assert mean.metadata["cvdm"]["n_samples"] == 8
    two = 5 + np.random.default_rng(0).standard_normal((8, 32, 32)).astype(np.float32)[:2]
    np.testing.assert_allclose(mean.data, two.mean(axis=0), rtol=1e-6)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_cancel_before_the_first_sample_keeps_the_preview(viewer, sr_model_path, notifications, monkeypatch,
                                                          qtbot, wait_idle):
    fake = FakeEngine(hold_after={0})
    monkeypatch.setattr(engine, "reconstruct", fake)
    viewer.add_image(np.random.default_rng(3).random((16, 16)).astype(np.float32), name="wf")
    widget = open_widget(viewer, sr_model_path, "wf")
    assert widget.start()
    qtbot.waitUntil(fake.holding.is_set, timeout=20_000)
    widget.cancel_button.click()
    fake.release()
    wait_idle(widget)
    name = f"wf CVDM mean (preview: {UPSAMPLED_KIND})"
    assert notifications.info == [f"Cancelled before the first sample: 'wf CVDM mean' keeps the preview "
                                  f"({UPSAMPLED_KIND})."]
    assert name in viewer.layers and "wf CVDM variance" not in viewer.layers
    # A later run takes the preview layer over (no second mean layer).
    monkeypatch.setattr(engine, "reconstruct", FakeEngine())
    assert widget.start()
    wait_idle(widget)
    assert [layer.name for layer in viewer.layers if "CVDM mean" in layer.name] == ["wf CVDM mean"]


def test_showing_a_1024_result_does_one_layer_change_per_gui_turn(viewer, sr_model_path, notifications,
                                                                  monkeypatch, qtbot, wait_idle, stall_meter):
    """A 512² widefield input → 1024² outputs: preview, four rounds and the final result. Every layer add,
    update, reveal or removal runs in an event-loop turn of its own, with the GUI's timer ticking between
    them. The 0.25 s goal per turn is a speed figure, measured in ``benchmarks/gui_stall.py``; here only
    a freeze (1 s of GUI-thread CPU in one turn) fails."""
    from napari_cvdm._widgets import _result_layers

    changes_per_turn: list[int] = []
    changes = [0]

    def counted(function):
        def wrapper(*args, **kwargs):
            changes[0] += 1
            return function(*args, **kwargs)
        return wrapper

    for name in ("add_or_replace_image", "remove_layer"):
        monkeypatch.setattr(_result_layers, name, counted(getattr(_result_layers, name)))
    monkeypatch.setattr(_result_layers.ResultLayers, "_reveal", counted(_result_layers.ResultLayers._reveal))
    run_next = _result_layers.StagedUpdates._run_next

    def one_turn(self):
        changes[0] = 0
        run_next(self)
        changes_per_turn.append(changes[0])
    monkeypatch.setattr(_result_layers.StagedUpdates, "_run_next", one_turn)
    monkeypatch.setattr(engine, "reconstruct", FakeEngine())
    viewer.add_image(np.random.default_rng(4).random((512, 512)).astype(np.float32) * 100, name="wf")
    widget = open_widget(viewer, sr_model_path, "wf", samples=4)
    qtbot.wait(200)
    stall_meter.start()
    assert widget.start()
    wait_idle(widget)
    qtbot.waitUntil(lambda: not widget._staged.busy, timeout=10_000)
    stall_meter.stop()
    assert notifications.error == []
    assert viewer.layers["wf CVDM mean"].data.shape == (1024, 1024)
    assert {"wf CVDM variance", "wf CVDM γ map"} <= {layer.name for layer in viewer.layers}
    assert sum(changes_per_turn) >= 5, changes_per_turn  # preview, reveal, mean, variance, γ map at least
    assert max(changes_per_turn) == 1, f"layer changes per GUI turn: {changes_per_turn}"
    assert len(stall_meter.ticks) > len(changes_per_turn)  # the timer ticked between the turns
    longest = stall_meter.longest_stretch_s()
    assert longest < 1.0, f"the GUI thread worked {longest:.3f} s without returning to its event loop"


def test_with_the_real_engine_the_layers_refine_and_cancel_keeps_the_finished_samples(
        viewer, sr_model_path, notifications, qtbot, wait_idle):
    viewer.add_image(np.random.default_rng(5).random((16, 16)).astype(np.float32), name="wf")
    widget = open_widget(viewer, sr_model_path, "wf", samples=50, steps=20)
    assert widget.start()
    qtbot.waitUntil(lambda: (mean_layer(viewer, "wf") is not None
                             and mean_layer(viewer, "wf").metadata["cvdm"]["samples_done"] >= 2), timeout=30_000)
    assert "/ 50 samples" in widget.status_label.text()
    widget.cancel_button.click()
    wait_idle(widget)
    assert notifications.error == []
    mean, variance = viewer.layers["wf CVDM mean"], viewer.layers["wf CVDM variance"]
    done = mean.metadata["cvdm"]["samples_done"]
    assert 2 <= done < 50 and variance.metadata["cvdm"]["samples_done"] == done
    assert notifications.info == [f"Cancelled after {done} of 50 samples: the layers keep the mean and variance "
                                  f"of those {done}."]
    assert mean.metadata["cvdm"]["engine"]["samples_done"] == done
    assert np.all(variance.data >= 0) and variance.data.max() > 0


def test_qpi_and_sr_results_get_a_hidden_data_consistency_layer_on_their_grids(viewer, qpi_model_path, sr_model_path,
                                                                       notifications, monkeypatch, wait_idle):
    from napari_cvdm.physics.consistency import qpi_consistency

    monkeypatch.setattr(engine, "reconstruct", FakeEngine())
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    stack = viewer.layers["cell defocus stack (±1 µm)"]
    stack.data = stack.data[:, :64, :48]
    widget = open_widget(viewer, qpi_model_path, stack.name, samples=2)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    layer = viewer.layers[f"{stack.name} CVDM data consistency"]
    mean = viewer.layers[f"{stack.name} CVDM mean"].data
    expected = qpi_consistency(mean, np.asarray(stack.data), 1.0, 0.521, stack.scale[-1], amplitude="unit")
    np.testing.assert_allclose(layer.data, expected, rtol=1e-4)
    assert not layer.visible and "forward(mean)" in layer.metadata["cvdm"]["role"]
    assert layer.name in widget.status_label.text()

    viewer.add_image(np.random.default_rng(6).random((16, 16)).astype(np.float32), name="wf")
    widget.select_model(sr_model_path)
    widget.input_combo.setCurrentText("wf")
    assert widget.start()
    wait_idle(widget)
    wf = viewer.layers["wf CVDM data consistency"]  # on the camera grid of the input, not the output's
    assert wf.data.shape == (16, 16) and tuple(wf.scale) == tuple(viewer.layers["wf"].scale)
