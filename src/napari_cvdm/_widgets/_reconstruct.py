"""Reconstruct dock widget: pick a model and an input layer, get mean, variance, (calibrated) ± error and γ-map layers.

The widget only gathers choices, starts :func:`napari_cvdm.engine.reconstruct`
in a worker thread and shows what comes back; all model logic lives in the engine.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils import notifications
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import engine
from ..residual import base_for, tie_of
from ..uncertainty.apply import calibration_line
from ..uncertainty.calibrate import calibrate_model, refit_base, with_calibration
from ..checkpoint import ModelInfo, load_model, save_model
from ..errors import Cancelled, InputError
from ..model import SAMPLERS
from ..engine.settings import BOUNDS, DEFAULTS
from ..model.samplers import DEFAULT_STEPS, LOG_SNR_MAX
from ._errors import describe_failure
from ._calibrate_layers import layer_pair
from ._layers import MEAN_SUFFIX, OUTPUT_SUFFIXES, fill_layer_combo, output_geometry
from ..predict import Acquisition, Hooks, MemorySink, Prediction, check_input, output_names, predict
from ..preview import Preview, defocus_um
from ._result_layers import ResultLayers, StagedUpdates
from ._registry import MODEL_REGISTRY, ModelEntry, ModelRegistry, model_card
from ._run_panel import RunPanel, spin_box
from ._workers import ConnectionSet, Outcome
from ._zarr_outputs import LiveZarrSink, StoreReport, add_store_layers, is_lazy_layer_data, planned_stores

CURRENT_PLANE = "current plane"
ALL_PLANES = "all planes"
STACK_MODE = "one stack layer (…, 2, H, W)"
TWO_LAYERS_MODE = "two layers (−dz, +dz)"
#: Largest in-memory input whose values are checked on the GUI thread before its job starts (tens of ms).
QUICK_SCAN_BYTES = 64 * 2**20


def input_channels(info: ModelInfo) -> int:
    """Channels of the model's condition: 1 for a widefield image, 2 for a defocus stack."""
    return int(info.config.y_channels)


def is_candidate_image(layer) -> bool:
    """A 2-D+ non-RGB Image layer (a multiscale one is reconstructed at its highest resolution)."""
    return isinstance(layer, Image) and not layer.rgb and layer.ndim >= 2


def layer_array(layer):
    """A layer's full-resolution array, as it is (dask, zarr or numpy: never read whole here)."""
    return layer.data[0] if layer.multiscale else layer.data


def fits_model(layer, channels: int) -> bool:
    """Whether a layer can be the (whole) input of a model whose condition has ``channels`` channels."""
    if not is_candidate_image(layer):
        return False
    if channels == 1:
        return True
    return layer.ndim >= 3 and layer_array(layer).shape[-3] == channels


def quick_to_scan(image) -> bool:
    """Whether the input's values are checked before its job starts, on the GUI thread: an in-memory
    array of at most :data:`QUICK_SCAN_BYTES`. The job checks the others' (lazy ones plane by plane)."""
    return isinstance(image, np.ndarray) and image.nbytes <= QUICK_SCAN_BYTES


def _read_layers(layers: list, plane: tuple[int, ...] | None):
    """The input of one layer, or the −dz and +dz layers stacked (…, 2, H, W): the current ``plane`` read into
    memory, or every plane: in memory for numpy layers, lazy (dask) for the others."""
    arrays = [layer_array(layer) for layer in layers]
    if plane is not None:
        arrays = [np.asarray(array[plane]) for array in arrays]
    if len(arrays) == 1:
        return arrays[0] if not isinstance(arrays[0], np.ndarray) else np.asarray(arrays[0])
    if all(isinstance(array, np.ndarray) for array in arrays):
        return np.stack(arrays, axis=-3)
    import dask.array as da

    return da.stack([da.asarray(array) for array in arrays], axis=-3)


def fits_model_info(layer, info: ModelInfo) -> bool:
    """Whether a layer can be the whole input of the model ``info`` describes (a defocus stack only of QPI)."""
    channels = input_channels(info)
    if channels == 1 and "defocus_um" in getattr(layer, "metadata", {}):
        return False
    return fits_model(layer, channels)


def is_output_layer(layer) -> bool:
    """A layer this widget made (mean or its preview, variance, error, γ map, samples): never an input."""
    name = layer.name
    return name.endswith(OUTPUT_SUFFIXES) \
        or f" {MEAN_SUFFIX} (preview" in name


def samples_per_round(n_samples: int, device: str) -> int:
    """Samples drawn together before the layers update (the engine's ``max_batch``).

    CPU and MPS: 1, a layer update after every sample (a batch there costs about as much
    as its samples one by one); CUDA: a quarter of N, four updates (a GPU needs batches).
    """
    if engine.resolve_device(device).type == "cuda":
        return max(1, -(-int(n_samples) // 4))
    return 1


@dataclass
class ReconstructionJob:
    """What the main thread needs to show a finished reconstruction."""

    entry: ModelEntry
    settings: engine.ReconstructionSettings
    input_name: str
    input_scale: tuple[float, ...]      # of the output's axes (channel axis and unused leading axes dropped)
    input_translate: tuple[float, ...]
    plane: tuple[int, ...] | None       # leading index of the current plane, None for all planes
    acquisition: Acquisition            # the layer's name, pixel size (from a calibrated scale) and ±dz
    stores: dict | None = None          # all planes of a lazy layer: the OME-Zarr stores (and sidecar) by output

    @property
    def input_pixel_size_um(self) -> float | None:
        return self.acquisition.pixel_size_um


def setting_spin_box(name: str, value: int | None = None) -> QSpinBox:
    """A spin box for the whole-number setting ``name``: its range and meaning from ``BOUNDS``, its value
    ``value`` (None: the setting's default). Qt's spin boxes hold 32-bit values: larger bounds are cut."""
    bound = BOUNDS[name]
    value = getattr(DEFAULTS, name) if value is None else value
    return spin_box(int(bound.low), int(min(bound.high, 2**31 - 1)), value, bound.help[:1].upper() + bound.help[1:])


def optics_spin_box(high: float, tooltip: str) -> QDoubleSpinBox:
    """A spin box for an optical value in (0, ``high``]; 0 shows "auto": the layer's metadata, else the model's."""
    spin = QDoubleSpinBox()
    spin.setDecimals(3)
    spin.setRange(0.0, high)
    spin.setSingleStep(0.01)
    spin.setSpecialValueText("auto")
    spin.setToolTip(tooltip)
    return spin


def layer_pixel_size_um(layer) -> float | None:
    """The layer's pixel size if its scale looks calibrated (square pixels, not 1), else None."""
    y, x = (float(v) for v in layer.scale[-2:])
    if y <= 0 or abs(y - x) > 1e-6 * max(y, x) or abs(x - 1.0) < 1e-12:
        return None
    return x


class ModelCache:
    """Keeps the last loaded model, so that running again does not reload the weights."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._model = None

    def get(self, path: Path, device: str):
        key = (str(path), path.stat().st_mtime_ns, device)
        with self._lock:
            if self._key != key:
                self._model, self._key = None, None
                self._model, _ = load_model(path, engine.resolve_device(device))
                self._key = key
            return self._model


class ReconstructWidget(QWidget):
    """Dock widget: model picker and card, input picker, sampling options, Reconstruct/Cancel."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry if registry is not None else MODEL_REGISTRY
        self.models = ModelCache()
        self._job: ReconstructionJob | None = None
        self._display: ResultLayers | None = None
        self._last_progress = (0, 0)
        self._staged = StagedUpdates(self, self._display_failed)
        self._defaults_from: Path | None = None

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_model_group())
        layout.addWidget(self._build_input_group())
        layout.addWidget(self._build_options_group())
        layout.addLayout(self._build_run_row())
        layout.addStretch(1)

        self.connections = ConnectionSet(self)
        self.connections.connect(self.registry.changed, self._refresh_models)
        for event in ("inserted", "removed", "reordered"):
            self.connections.connect(getattr(self.viewer.layers.events, event), self._on_layers_changed)
        self.connections.connect(self.viewer.layers.selection.events.active, self._preselect_model)
        for layer in self.viewer.layers:
            self._watch_layer(layer)
        self._refresh_models()

    # ------------------------------------------------------------------ layout
    def _build_model_group(self) -> QGroupBox:
        group = QGroupBox("Model")
        layout = QVBoxLayout(group)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Models in the models/ folder, opened files and models trained since napari started")
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Load a model file (.safetensors)")
        self.open_button.clicked.connect(self._ask_model_file)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.open_button)
        layout.addLayout(row)
        self.calibrate_button = QPushButton("Calibrate on layers…")
        self.calibrate_button.setToolTip("Fit this model's error bars on an input layer and its true target layer; "
                                         "saves a new model file")
        self.calibrate_button.clicked.connect(self._ask_calibration)
        layout.addWidget(self.calibrate_button)
        self.model_card = QLabel()
        self.model_card.setWordWrap(True)
        self.model_card.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.model_card)
        return group

    def _build_input_group(self) -> QGroupBox:
        group = QGroupBox("Input")
        form = QFormLayout(group)
        self.qpi_mode_combo = QComboBox()
        self.qpi_mode_combo.addItems([STACK_MODE, TWO_LAYERS_MODE])
        self.qpi_mode_combo.currentIndexChanged.connect(self._refresh_layers)
        self.input_combo = QComboBox()
        self.input_combo.currentIndexChanged.connect(self._update_plane_choice)
        self.minus_combo = QComboBox()
        self.plus_combo = QComboBox()
        self.minus_combo.currentIndexChanged.connect(self._update_plane_choice)
        self.planes_combo = QComboBox()
        self.planes_combo.addItems([CURRENT_PLANE, ALL_PLANES])
        self.planes_combo.setToolTip("For a time series or z-stack: reconstruct the plane shown or every plane")
        self.qpi_mode_label = QLabel("QPI input")
        self.input_label = QLabel("Image")
        self.minus_label = QLabel("−dz layer")
        self.plus_label = QLabel("+dz layer")
        form.addRow(self.qpi_mode_label, self.qpi_mode_combo)
        form.addRow(self.input_label, self.input_combo)
        form.addRow(self.minus_label, self.minus_combo)
        form.addRow(self.plus_label, self.plus_combo)
        form.addRow("Planes", self.planes_combo)
        self.wavelength_spin = optics_spin_box(5.0, "Wavelength in µm: the illumination's (QPI) or the emission's "
                                                    "(SR); auto: the layer's metadata, else the model's")
        self.na_spin = optics_spin_box(2.0, "Numerical aperture of the objective (SR); auto: the layer's "
                                            "metadata, else the training simulator's")
        self.na_label = QLabel("NA")
        form.addRow("Wavelength (µm)", self.wavelength_spin)
        form.addRow(self.na_label, self.na_spin)
        self.output_folder_edit = QLineEdit()
        self.output_folder_edit.setPlaceholderText("for every plane of a multiscale or dask layer")
        self.output_folder_edit.setToolTip("Every plane of a large (multiscale or dask) layer is written as "
                                           "OME-Zarr into this folder, and shown as it fills in")
        browse = QPushButton("…")
        browse.clicked.connect(self._ask_output_folder)
        row = QHBoxLayout()
        row.addWidget(self.output_folder_edit)
        row.addWidget(browse)
        form.addRow("Output folder", row)
        return group

    def _build_options_group(self) -> QGroupBox:
        group = QGroupBox("Sampling")
        form = QFormLayout(group)
        self.samples_spin = setting_spin_box("n_samples")
        self.sampler_combo = QComboBox()
        self.sampler_combo.addItems(list(SAMPLERS))
        self.sampler_combo.setToolTip("dpm_solver_2m_sde: fast and stochastic (10–25 steps, the best "
                                      "measured); dpm_solver_2m, ddim: deterministic; "
                                      "ancestral: the paper's sampler (~200 steps)")
        self.steps_spin = setting_spin_box("steps", DEFAULT_STEPS)
        bound = BOUNDS["log_snr_max"]
        self.log_snr_max_spin = QDoubleSpinBox()
        self.log_snr_max_spin.setDecimals(1)
        self.log_snr_max_spin.setRange(bound.low + 0.1, bound.high)  # the bound excludes its low end
        self.log_snr_max_spin.setValue(LOG_SNR_MAX)
        self.log_snr_max_spin.setToolTip(bound.help)
        self.tile_spin = setting_spin_box("tile_size")
        self.tile_spin.setSingleStep(32)
        self.device_combo = QComboBox()
        self.device_combo.addItems(engine.available_devices())
        self.device_combo.setToolTip(BOUNDS["device"].help)
        self.seed_spin = setting_spin_box("seed")
        self.keep_samples_check = QCheckBox("add the N samples as a layer")
        bound = BOUNDS["consistency_strength"]
        self.consistency_spin = QDoubleSpinBox()
        self.consistency_spin.setDecimals(2)
        self.consistency_spin.setRange(bound.low, bound.high)
        self.consistency_spin.setToolTip(bound.help)
        self.plain_mean_check = QCheckBox("plain mean of the samples")
        self.plain_mean_check.setToolTip(BOUNDS["shrink_refinement"].help)
        form.addRow("Samples N", self.samples_spin)
        form.addRow("Sampler", self.sampler_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Grid end (log-SNR)", self.log_snr_max_spin)
        form.addRow("Data consistency ζ", self.consistency_spin)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Seed", self.seed_spin)
        form.addRow("", self.keep_samples_check)
        form.addRow("", self.plain_mean_check)
        return group

    def _build_run_row(self) -> QVBoxLayout:
        self.run_button = QPushButton("Reconstruct")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.run_panel = RunPanel(self, [self.run_button, self.calibrate_button], self.cancel_button,
                                  stopping="Stopping…",
                                  busy="A reconstruction or calibration is already running; "
                                       "wait for it or press Cancel.")
        self.progress_bar, self.status_label = self.run_panel.progress_bar, self.run_panel.status_label
        row = QHBoxLayout()
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        column = QVBoxLayout()
        column.addLayout(row)
        column.addWidget(self.progress_bar)
        column.addWidget(self.status_label)
        return column

    # ------------------------------------------------------------------ models
    def _refresh_models(self) -> None:
        current = self.selected_entry()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("— choose a model —", None)
        for entry in self.registry.entries():
            self.model_combo.addItem(entry.label, str(entry.path))
            self.model_combo.setItemData(self.model_combo.count() - 1, str(entry.path),
                                         Qt.ItemDataRole.ToolTipRole)
        index = self.model_combo.findData(str(current.path)) if current is not None else -1
        if index < 0:
            index = self.model_combo.findData(self._model_for_layer())
        if index < 0 and self.model_combo.count() == 2:
            index = 1  # a single model: choose it
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)
        self._on_model_changed()

    def _model_for_layer(self) -> str | None:
        """The path of the model that fits the selected (else the only) visible input layer, if one does.

        Fits: the task and channel count (a 2-plane defocus stack → a QPI model). Where several
        fit, the only one of the residual formulation (the default, e.g. cvdm-qpi-residual beside
        the paper's cvdm-qpi-small) is chosen. Hidden layers are left out: a sample's ground truth
        (e.g. the cell's phase) is not an input.
        """
        images = [layer for layer in self.viewer.layers
                  if layer.visible and is_candidate_image(layer) and not is_output_layer(layer)]
        active = self.viewer.layers.selection.active
        layer = active if active in images else images[0] if len(images) == 1 else None
        if layer is None:
            return None
        fitting = [entry for entry in self.registry.entries()
                   if entry.info is not None and fits_model_info(layer, entry.info)]
        if len(fitting) > 1:
            fitting = [entry for entry in fitting if base_for(entry.info.config).has_base]
        return str(fitting[0].path) if len(fitting) == 1 else None

    def _preselect_model(self, *_) -> None:
        """While no model is chosen, choose the one that fits the input layer (if only one does)."""
        if self.selected_entry() is None:
            index = self.model_combo.findData(self._model_for_layer())
            if index > 0:
                self.model_combo.setCurrentIndex(index)  # _on_model_changed refreshes the layers

    def selected_entry(self) -> ModelEntry | None:
        path = self.model_combo.currentData() if hasattr(self, "model_combo") else None
        return self.registry.get(path) if path else None

    def select_model(self, path: str | Path) -> None:
        """Choose the model file ``path`` (adding it to the registry if needed)."""
        path = Path(path).expanduser().resolve()
        if self.registry.get(path) is None:
            self.registry.add(path, "opened")
        self.model_combo.setCurrentIndex(self.model_combo.findData(str(path)))

    def open_model_file(self, path: str | Path) -> ModelEntry:
        """Add a model file chosen by the user and select it; a bad file is reported at once."""
        entry = self.registry.add(path, "opened")
        self.select_model(entry.path)
        if entry.error:
            notifications.show_error(entry.error)
        return entry

    def _ask_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CVDM model", "", "CVDM models (*.safetensors);;All files (*)")
        if path:
            self.open_model_file(path)

    def _on_model_changed(self, *_) -> None:
        entry = self.selected_entry()
        if entry is None:
            self.model_card.setText("No model chosen. Pick one, or press Open… to load a .safetensors model file.")
        else:
            card = model_card(entry)
            if entry.info is not None:
                card += f"\nError bars: {calibration_line(entry.info)}"
            self.model_card.setText(card)
        if entry is not None and entry.info is not None and entry.path != self._defaults_from:
            self._defaults_from = entry.path  # a newly chosen model: take its sampling defaults once
            sampler = entry.info.sampler or {}
            if sampler.get("name") in SAMPLERS:
                self.sampler_combo.setCurrentText(sampler["name"])
            if sampler.get("steps"):
                self.steps_spin.setValue(int(sampler["steps"]))
            self.log_snr_max_spin.setValue(float((sampler.get("log_snr_range") or (None, LOG_SNR_MAX))[1]))
            if sampler.get("n_samples"):
                self.samples_spin.setValue(int(sampler["n_samples"]))
            self.consistency_spin.setValue(float(sampler.get("consistency_strength", 0.0)))
        self._refresh_layers()

    def _channels(self) -> int:
        entry = self.selected_entry()
        return input_channels(entry.info) if entry is not None and entry.info is not None else 1

    # ------------------------------------------------------------------ layers
    def _watch_layer(self, layer) -> None:
        self.connections.connect(layer.events.name, self._refresh_layers)

    def _on_layers_changed(self, event) -> None:
        if event.type == "inserted":
            self._watch_layer(event.value)
        elif event.type == "removed":
            self.connections.disconnect(event.value.events.name, self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, *_) -> None:
        channels = self._channels()
        two_layer_mode = channels == 2 and self.qpi_mode_combo.currentText() == TWO_LAYERS_MODE
        for widget in (self.qpi_mode_label, self.qpi_mode_combo):
            widget.setVisible(channels == 2)
        for widget in (self.input_label, self.input_combo):
            widget.setVisible(not two_layer_mode)
        for widget in (self.minus_label, self.minus_combo, self.plus_label, self.plus_combo):
            widget.setVisible(two_layer_mode)
        for widget in (self.na_label, self.na_spin):
            widget.setVisible(channels == 1)
        self.input_label.setText("Image" if channels == 1 else "Defocus stack")
        images = [layer for layer in self.viewer.layers if is_candidate_image(layer) and not is_output_layer(layer)]
        fill_layer_combo(self.input_combo, [layer for layer in images if fits_model(layer, channels)])
        fill_layer_combo(self.minus_combo, images)
        fill_layer_combo(self.plus_combo, images, prefer_index=1)
        self._update_plane_choice()

    def _input_layers(self) -> list:
        """The chosen input layer(s): one layer, or the −dz and +dz layers."""
        if self._channels() == 2 and self.qpi_mode_combo.currentText() == TWO_LAYERS_MODE:
            layers = [self.minus_combo.currentData(), self.plus_combo.currentData()]
        else:
            layers = [self.input_combo.currentData()]
        return [layer for layer in layers if layer is not None and layer in self.viewer.layers]

    def _leading_ndim(self, layer, stacked: bool) -> int:
        return layer.ndim - 2 - (1 if stacked else 0)

    def _update_plane_choice(self, *_) -> None:
        layers = self._input_layers()
        stacked = self._channels() > 1 and len(layers) == 1
        self.planes_combo.setEnabled(bool(layers) and self._leading_ndim(layers[0], stacked) > 0)

    # ------------------------------------------------------------------ run
    def settings(self) -> engine.ReconstructionSettings:
        """The sampling options as the engine's settings object."""
        return engine.ReconstructionSettings(
            n_samples=self.samples_spin.value(), sampler=self.sampler_combo.currentText(),
            steps=self.steps_spin.value(), log_snr_max=self.log_snr_max_spin.value(),
            tile_size=self.tile_spin.value(),
            device=self.device_combo.currentText(), seed=self.seed_spin.value(),
            keep_samples=self.keep_samples_check.isChecked(),
            shrink_refinement=not self.plain_mean_check.isChecked(),
            consistency_strength=self.consistency_spin.value(),
            max_batch=samples_per_round(self.samples_spin.value(), self.device_combo.currentText()),
        )

    def gather_input(self, info: ModelInfo) -> tuple[np.ndarray, ReconstructionJob]:
        """The array to reconstruct and the output geometry; raises InputError with one clear sentence."""
        channels = input_channels(info)
        two_layer_mode = channels == 2 and self.qpi_mode_combo.currentText() == TWO_LAYERS_MODE
        layers = self._input_layers()
        task_name = {"sr": "widefield super-resolution", "qpi": "phase from a defocus stack"}.get(info.task,
                                                                                                  info.task)
        if not layers or (two_layer_mode and len(layers) < 2):
            if channels == 2:
                raise InputError("No input chosen: this QPI model needs a defocus stack shaped (…, 2, H, W) "
                                 "or two image layers chosen as −dz and +dz.")
            raise InputError("No input chosen: add or open a 2-D image layer and pick it under Input.")
        for layer in layers:
            if not is_candidate_image(layer):
                raise InputError(f"Layer '{layer.name}' cannot be reconstructed: it must be a grayscale Image "
                                 "layer with at least two dimensions.")
        if two_layer_mode:
            minus, plus = layers
            if minus is plus:
                raise InputError("Choose two different layers as −dz and +dz.")
            if layer_array(minus).shape != layer_array(plus).shape:
                raise InputError(f"The −dz and +dz layers differ in shape ({layer_array(minus).shape} and "
                                 f"{layer_array(plus).shape}); they must match.")
        elif not fits_model(layers[0], channels):
            raise InputError(f"Layer '{layers[0].name}' has shape {layer_array(layers[0]).shape}, but this "
                             f"{task_name} model needs (…, {channels}, H, W).")
        if channels == 1 and "defocus_um" in layers[0].metadata:
            raise InputError(f"Layer '{layers[0].name}' is a defocus stack, but this model is for "
                             f"{task_name}; choose a QPI model.")
        layer = layers[0]
        stacked = channels > 1 and not two_layer_mode
        leading = self._leading_ndim(layer, stacked)
        all_planes = self.planes_combo.currentText() == ALL_PLANES or leading == 0
        plane = None if all_planes else self._current_plane(layer, leading)

        image = _read_layers([minus, plus] if two_layer_mode else [layer], plane)
        keep = list(range(leading)) if all_planes else []
        keep += [layer.ndim - 2, layer.ndim - 1]
        job = ReconstructionJob(
            entry=self.selected_entry(), settings=self.settings(), input_name=layer.name,
            input_scale=tuple(float(layer.scale[i]) for i in keep),
            input_translate=tuple(float(layer.translate[i]) for i in keep), plane=plane,
            acquisition=Acquisition(layer.name, layer_pixel_size_um(layer),
                                    self.wavelength_spin.value() or layer.metadata.get("wavelength_um"),
                                    dz_um=defocus_um(layer.metadata) if stacked else None,
                                    na=self.na_spin.value() or layer.metadata.get("na")),
        )
        if is_lazy_layer_data(image):
            job.stores = planned_stores(self.output_folder_edit.text(), layer.name, output_names(info, job.settings))
        return image, job

    def _ask_output_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the OME-Zarr outputs of every plane")
        if folder:
            self.output_folder_edit.setText(folder)

    def _current_plane(self, layer, leading: int) -> tuple[int, ...]:
        position = layer.world_to_data(self.viewer.dims.point)
        return tuple(int(np.clip(round(float(position[i])), 0, layer.data.shape[i] - 1)) for i in range(leading))

    def start(self) -> bool:
        """Check the choices and start a reconstruction; returns whether it started."""
        if self.run_panel.refuse_if_running():
            return False
        entry = self.selected_entry()
        if entry is None:
            notifications.show_error("No model chosen: pick a model or press Open… to load a model file.")
            return False
        if entry.info is None:
            notifications.show_error(entry.error or f"{entry.path.name} cannot be used.")
            return False
        try:
            image, job = self.gather_input(entry.info)
            # no value of a lazy layer is read here; the warnings come from the job itself
            check_input(entry.info, image, job.acquisition, values=quick_to_scan(image))
        except InputError as exc:
            notifications.show_error(str(exc))
            return False
        self._job, self._last_progress = job, (0, 0)
        self._display = self._result_layers(job)
        self.run_panel.launch(self._computation(entry, image, job), f"CVDM: reconstructing {job.input_name}",
                              f"Loading {entry.path.name}…", on_done=self._finish, on_progress=self._show_progress,
                              on_report=self._show_report)
        return True

    def _computation(self, entry: ModelEntry, image: np.ndarray, job: ReconstructionJob):
        """``compute(progress, should_stop, report)`` for the worker thread: the job
        (:func:`napari_cvdm.predict.predict`) into a :class:`MemorySink`.

        Reports (to :meth:`_show_report`, on the GUI thread): the previews, the mean after every
        round of samples, and each warning as a sentence.
        """
        path, info, settings, models = entry.path, entry.info, job.settings, self.models

        def compute(progress, should_stop, report):
            model = models.get(path, settings.device)
            if job.stores is not None:  # every plane of a lazy layer: to OME-Zarr, shown as it fills in
                lead = np.ndim(image) - 2 - (input_channels(info) > 1)
                sink = LiveZarrSink(job.stores, report, lead, job.input_pixel_size_um, (0.0, 0.0))
                hooks = Hooks(progress, should_stop, on_note=report)
            else:
                sink = MemorySink()
                hooks = Hooks(progress, should_stop, on_partial=report, on_preview=report, on_note=report)
            return predict(model, info, image, job.acquisition, settings, hooks, sink, model_path=path), sink

        return compute

    # ------------------------------------------------------------------ calibration
    def _ask_calibration(self) -> None:
        """Ask for the input layer, the target layer and a new file, then calibrate."""
        names = [layer.name for layer in self.viewer.layers if is_candidate_image(layer) and not is_output_layer(layer)]
        if self.selected_entry() is None or len(names) < 2:
            notifications.show_error("Calibrating needs a chosen model and two image layers: an input and its "
                                     "true target.")
            return
        title = "Calibrate on layers"
        source, ok = QInputDialog.getItem(self, title, "Input layer (as for Reconstruct):", names, 0, False)
        if not ok:
            return
        target, ok = QInputDialog.getItem(self, title, "Target layer (the truth, on the output grid):", names,
                                          1 if names[0] == source else 0, False)
        if not ok:
            return
        suggested = self.selected_entry().path.with_name(f"{self.selected_entry().path.stem}-calibrated.safetensors")
        path, _ = QFileDialog.getSaveFileName(self, "Save the calibrated model as", str(suggested),
                                              "CVDM models (*.safetensors)")  # the dialog confirms an overwrite
        if not path:
            return
        refit = tie_of(self.selected_entry().info) is not None and QMessageBox.question(
            self, title, "Refit the TIE base's regulariser on this pair first? (Kept only if it lowers the "
                         "base's error on the pair; the error bars are then fitted for the refitted base.)",
        ) == QMessageBox.StandardButton.Yes
        self.calibrate_on_layers(self.viewer.layers[source], self.viewer.layers[target], path, refit=refit)

    def calibrate_on_layers(self, input_layer, target_layer, path: str | Path, refit: bool = False) -> bool:
        """Calibrate the chosen model on one layer pair in the background and save it as the NEW file ``path``.

        ``refit``: first refit a residual QPI model's TIE base on the pair (``cvdm calibrate
        --refit-base``). The model it comes from is never replaced. Returns whether the work started.
        """
        if self.run_panel.refuse_if_running():
            return False
        entry = self.selected_entry()
        path = Path(path).expanduser().resolve()
        try:
            if entry is None or entry.info is None:
                raise InputError(entry.error if entry is not None and entry.error else "No model chosen.")
            if path == entry.path:
                raise InputError(f"Choose a new file: the calibrated model never replaces {entry.path.name}.")
            if refit and tie_of(entry.info) is None:
                raise InputError(f"{entry.path.name} has no TIE base to refit: refitting is for residual QPI models.")
            pair = layer_pair(entry.info, input_layer, target_layer)
        except InputError as exc:
            notifications.show_error(str(exc))
            return False
        models, info, settings = self.models, entry.info, self.settings()
        pixel_size = layer_pixel_size_um(input_layer)

        def compute(progress, should_stop):
            model = models.get(entry.path, settings.device)
            used, refit_words = refit_base(info, [pair], pixel_size) if refit else (info, "")
            calibration = calibrate_model(model, used, [pair], settings, source=f"napari layers {pair.name}",
                                          should_stop=should_stop, input_pixel_size_um=pixel_size)
            return save_model(path, model, with_calibration(used, calibration)), refit_words

        self.run_panel.launch(compute, f"CVDM: calibrating {entry.path.name}", f"Calibrating on {pair.name}…",
                              on_done=self._calibrated)
        return True

    def _calibrated(self, outcome: Outcome) -> None:
        if isinstance(outcome.error, Cancelled):
            self.status_label.setText("Calibration cancelled; nothing was saved.")
            return
        if outcome.error is not None:
            self.run_panel.failed(describe_failure(outcome.error, "Calibration"))
            return
        path, refit_words = outcome.value
        self.select_model(path)
        entry = self.selected_entry()
        refit_words = f"; {refit_words}" if refit_words else ""
        self.run_panel.succeeded(f"Saved {entry.path.name}: {calibration_line(entry.info)}{refit_words}")

    def cancel(self) -> None:
        """Stop the running reconstruction or calibration at its next denoising step."""
        self.run_panel.stop()

    @property
    def running(self) -> bool:
        """A reconstruction runs, or its layers are still being shown."""
        return self.run_panel.running or self._staged.busy

    @property
    def task(self):
        """The current (or last) background reconstruction, if any."""
        return self.run_panel.task

    def _show_progress(self, done: int, total: int) -> None:
        self._last_progress = (done, total)
        display = self._display
        if display is None:
            return
        steps = f"denoising step {done} of {total}" if total else "preparing"
        self.run_panel.show_progress(done, total, f"{display.progress_words()} · {steps}")

    def _show_report(self, report) -> None:
        """A preview or a round's partial result from the worker (GUI thread)."""
        if self._display is None:
            return
        if isinstance(report, str):
            notifications.show_warning(report)
        elif isinstance(report, StoreReport):
            self._show_store_report(report)
        elif isinstance(report, Preview):
            self._display.show_preview(report)
        else:
            self._display.show_samples(report, int(report.metadata.get("samples_done", 0)))
        self._show_progress(*self._last_progress)

    def _show_store_report(self, report: StoreReport) -> None:
        """"stores": add the lazy layers of the OME-Zarr outputs; "plane": refresh them."""
        if report.kind == "stores":
            stores = {name: p for name, p in report.value.items() if name != "sidecar"}
            self._store_layers = add_store_layers(self.viewer, self._display, stores)
        else:
            for layer in getattr(self, "_store_layers", []):
                layer.refresh()

    def _finish(self, outcome: Outcome) -> None:
        job, display, self._job, self._display = self._job, self._display, None, None
        if isinstance(outcome.error, Cancelled):
            self._finish_cancelled(outcome.error, display, job)
            return
        if outcome.error is not None:
            self.run_panel.failed(describe_failure(outcome.error, "Reconstruction", tile_size=job.settings.tile_size))
            return
        prediction, sink = outcome.value
        if job.stores is not None:
            for layer in getattr(self, "_store_layers", []):
                layer.refresh()
            self.run_panel.succeeded(f"Done: every plane is in {job.stores['sidecar'].parent}.")
            return
        self.show_result(prediction, job, display, sink.arrays)
        self._staged.put(f"done: {id(job)}", lambda: self._announce(job, prediction, display))

    def _announce(self, job: ReconstructionJob, prediction: Prediction, display: ResultLayers) -> None:
        """After the last layer is shown: the final status (and why one sample has no variance)."""
        if job.settings.n_samples == 1:
            notifications.show_info(prediction.uncertainty.variance_note)
        self.run_panel.succeeded(f"Done: {', '.join(display.shown_names())}.")

    def _finish_cancelled(self, error: Cancelled, display: ResultLayers, job: ReconstructionJob | None = None) -> None:
        """Keep what was computed: the partial mean (and variance) of the finished rounds, else the preview;
        the planes already written to OME-Zarr stay there."""
        if job is not None and job.stores is not None:
            message = f"Cancelled: the planes finished are kept in {job.stores['sidecar'].parent}."
            self._staged.put(f"done: {id(display)}", lambda: (self.status_label.setText(message),
                                                             notifications.show_info(message)))
            return
        partial = getattr(error, "partial", None)
        if partial is not None:
            display.show_samples(partial, int(partial.metadata.get("samples_done", 0)))
        done, total = display.samples_done, display.n_samples
        if done:
            kept = "mean and variance" if done > 1 else "mean"
            message = f"Cancelled after {done} of {total} samples: the layers keep the {kept} of those {done}."
        elif display.preview_kind:
            message = f"Cancelled before the first sample: '{display.name(MEAN_SUFFIX)}' keeps the preview " \
                      f"({display.preview_kind})."
        else:
            message = "Reconstruction cancelled."

        def say() -> None:
            self.status_label.setText(message)
            notifications.show_info(message)

        self._staged.put(f"done: {id(display)}", say)

    def _display_failed(self, error: Exception) -> None:
        self.run_panel.failed(describe_failure(error, "Showing the reconstruction"))

    # ------------------------------------------------------------------ output
    def _result_layers(self, job: ReconstructionJob) -> ResultLayers:
        """The (not yet shown) output layers of ``job``, with the metadata they all carry."""
        info = job.entry.info
        factor = int(info.upsampling_factor)
        scale, translate = output_geometry(job.input_scale, job.input_translate, factor)
        metadata = {
            "model": str(job.entry.path), "model_task": info.task, "input_layer": job.input_name,
            "settings": asdict(job.settings), "plane": list(job.plane) if job.plane is not None else "all",
            "upsampling_factor": factor, "input_pixel_size_um": job.input_pixel_size_um,
            "output_pixel_size_um": engine.output_pixel_size(info, job.input_pixel_size_um),
            "unit": info.target_unit,
        }
        return ResultLayers(self.viewer, self._staged, job.input_name, scale, translate, metadata,
                            job.settings.n_samples, input_geometry=(job.input_scale, job.input_translate))

    def show_result(self, prediction: Prediction, job: ReconstructionJob, display: ResultLayers | None = None,
                    arrays: dict[str, np.ndarray] | None = None) -> ResultLayers:
        """Show every output of a finished job as a layer (mean, variance, calibrated std and ± error,
        γ map, data consistency, samples; those the job gave), ``arrays`` (a sink's) or its own.

        The layers change in the next event-loop turns (one layer per turn).
        """
        display = display or self._result_layers(job)
        display.show_prediction(prediction, arrays if arrays is not None else prediction.outputs())
        return display
