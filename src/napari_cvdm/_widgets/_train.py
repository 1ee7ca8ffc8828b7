"""Train dock widget: pairs from layers or TIFF folders, live loss curve, Start / Stop / Resume.

The widget gathers a :class:`napari_cvdm.train.TrainConfig` and the image pairs
and runs :func:`napari_cvdm.train.train` in a worker thread; all model logic
lives there. The saved model is added to the shared model registry, so it
appears in the Reconstruct widget's picker at once.

"Start from" preselects the task's shipped model when the layers fit it (pixel size within
its range), with a fine-tuning step count, and says why; "new model" stays one choice away.
At each validation an optional preview layer shows the model's reconstruction of the
held-out data, updated in place.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from napari.utils import notifications
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import train as trainer
from ..config import FINE_TUNE_STEPS, FORMULATIONS, VALIDATION_SPLITS
from ..data.datasets import raw_pixel_size
from ..errors import InputError
from ..model import DENOISER_PRESETS, SCHEDULE_KINDS
from ..engine import available_devices
from ..residual import base_for
from ._errors import describe_failure
from ._layers import OUTPUT_SUFFIXES, fill_layer_combo
from ._loss_plot import LossPlot
from ._reconstruct import is_candidate_image, layer_pixel_size_um
from ._registry import MODEL_REGISTRY, ModelRegistry
from ._run_panel import RunPanel, spin_box
from ._workers import ConnectionSet, Outcome

LAYERS_SOURCE = "image layers"
FOLDERS_SOURCE = "TIFF folders"
TASK_LABELS = {"sr": "sr — widefield → super-resolution", "qpi": "qpi — defocus stack → phase"}
#: "Validate on" choices: TrainConfig's validation splits, and separate layers.
SEPARATE_LAYERS = "layers"
SPLIT_LABELS = {"auto": "whole images, else a band of each image", "image": "whole images",
                "region": "a band of each image", SEPARATE_LAYERS: "separate validation layers"}
assert set(SPLIT_LABELS) == {*VALIDATION_SPLITS, SEPARATE_LAYERS}
PREVIEW_NAME = "CVDM training preview"


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03`` for a duration in seconds; ``–`` when unknown."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def split_planes(array: np.ndarray, plane_ndim: int) -> list[np.ndarray]:
    """The planes of ``(..., *plane)`` as a list, each with ``plane_ndim`` dimensions."""
    array = np.asarray(array)
    if array.ndim < plane_ndim:
        raise InputError(f"expected at least {plane_ndim} dimensions, got shape {array.shape}")
    return list(array.reshape(-1, *array.shape[array.ndim - plane_ndim:]))


class TrainWidget(QWidget):
    """Dock widget that trains a CVDM on the user's image pairs."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry if registry is not None else MODEL_REGISTRY
        self.last_result = None
        self.preview_layer = None
        self._preview_geometry: tuple | None = None  # (scale, translate) of the target layer's plane
        self._base_chosen = False  # the user picked 'Start from' (no more suggestions)
        self._suggesting = False

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_data_group())
        layout.addWidget(self._build_model_group())
        layout.addWidget(self._build_training_group())
        layout.addLayout(self._build_buttons())
        self.progress_bar, self.status_label = self.run_panel.progress_bar, self.run_panel.status_label
        self.loss_plot = LossPlot()
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.loss_plot, 1)

        self.task_combo.currentIndexChanged.connect(self._on_task_changed)
        self.base_combo.currentIndexChanged.connect(self._note_base_choice)
        for combo in (self.input_layer_combo, self.target_layer_combo):
            combo.currentIndexChanged.connect(self._suggest_start)
        self.connections = ConnectionSet(self)
        self.connections.connect(self.registry.changed, self._refresh_bases)
        for event in ("inserted", "removed", "reordered"):
            self.connections.connect(getattr(self.viewer.layers.events, event), self._refresh_layers)
        self._on_source_changed()
        self._on_split_changed()
        self._on_task_changed()

    # ------------------------------------------------------------------ layout
    def _build_data_group(self) -> QGroupBox:
        group = QGroupBox("Training pairs")
        form = QFormLayout(group)
        self.source_combo = QComboBox()
        self.source_combo.addItems([LAYERS_SOURCE, FOLDERS_SOURCE])
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.input_layer_combo = QComboBox()
        self.target_layer_combo = QComboBox()
        self.input_dir_edit, input_row = _folder_row(self, "Folder of input TIFFs (widefield, or defocus stacks)")
        self.target_dir_edit, target_row = _folder_row(self, "Folder of target TIFFs with the same file names")
        self.input_layer_label, self.target_layer_label = QLabel("Input layer"), QLabel("Target layer")
        self.input_dir_label, self.target_dir_label = QLabel("Input folder"), QLabel("Target folder")
        self._input_dir_row, self._target_dir_row = input_row, target_row
        form.addRow("Source", self.source_combo)
        form.addRow(self.input_layer_label, self.input_layer_combo)
        form.addRow(self.target_layer_label, self.target_layer_combo)
        form.addRow(self.input_dir_label, input_row)
        form.addRow(self.target_dir_label, target_row)
        self.data_hint = QLabel()
        self.data_hint.setWordWrap(True)
        form.addRow(self.data_hint)
        return group

    def _build_model_group(self) -> QGroupBox:
        group = QGroupBox("Model")
        form = QFormLayout(group)
        self.task_combo = QComboBox()
        for task, label in TASK_LABELS.items():
            self.task_combo.addItem(label, task)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(DENOISER_PRESETS))
        self.preset_combo.setToolTip("Network size: tiny (tests), small (CPU), paper (GPU, the paper's size)")
        self.schedule_combo = QComboBox()
        self.schedule_combo.addItems(list(SCHEDULE_KINDS))
        self.schedule_combo.setToolTip("cvdm: learned per-pixel schedule (the method); others are baselines")
        self.formulation_combo = QComboBox()
        self.formulation_combo.addItems(list(FORMULATIONS))
        self.formulation_combo.setCurrentText(_config_defaults()["formulation"])
        self.formulation_combo.setToolTip("residual: refine a base estimate (QPI: TIE phase; SR: a direct "
                                          "predictor trained with it); paper: the CVDM of the paper")
        self.formulation_combo.currentIndexChanged.connect(self._update_base_correction)
        self.correction_check = QCheckBox("correct the TIE base with a direct predictor")
        self.correction_check.setToolTip("QPI, residual: the base becomes the TIE phase plus a network trained "
                                         "with it (L2) that also reads the stack's noise level, as in the shipped "
                                         "model; a fine-tuned model without one gains it and starts as it was")
        self.base_combo = QComboBox()
        self.base_combo.setToolTip("Fine-tune a trained model of this task (its size and schedule are kept), "
                                   "or start from random weights")
        self.base_combo.currentIndexChanged.connect(self._on_base_changed)
        self.start_hint = QLabel()
        self.start_hint.setWordWrap(True)
        self.output_edit = QLineEdit()
        self.output_edit.setToolTip("Where the model file (.safetensors) is saved; its checkpoints and log go "
                                    "to the folder beside it (name.run), from which Resume continues")
        self.output_edit.textChanged.connect(self._update_buttons)
        save_button = QPushButton("Save as…")
        save_button.clicked.connect(self._ask_output_path)
        row = QHBoxLayout()
        row.addWidget(self.output_edit, 1)
        row.addWidget(save_button)
        output_row = QWidget()
        output_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Task", self.task_combo)
        form.addRow("Start from", self.base_combo)
        form.addRow(self.start_hint)
        form.addRow("Size preset", self.preset_combo)
        form.addRow("Schedule", self.schedule_combo)
        form.addRow("Formulation", self.formulation_combo)
        form.addRow("Base", self.correction_check)
        form.addRow("Save to", output_row)
        return group

    def _build_training_group(self) -> QGroupBox:
        group = QGroupBox("Training")
        form = QFormLayout(group)
        defaults = _config_defaults()
        self.patch_spin = spin_box(16, 1024, defaults.get("patch_size", 64), "Patch size on the target grid (pixels)")
        self.patch_spin.setSingleStep(16)
        self.batch_spin = spin_box(1, 512, defaults.get("batch_size", 8), "Patches per training step")
        self.steps_spin = spin_box(1, 10_000_000, defaults.get("steps", 1000), "Training steps in total")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(defaults.get("learning_rate", 1e-4))
        self.lr_spin.setToolTip("AdamW learning rate")
        self.validation_spin = QDoubleSpinBox()
        self.validation_spin.setRange(0.0, 0.5)
        self.validation_spin.setSingleStep(0.05)
        self.validation_spin.setValue(defaults.get("validation_fraction", 0.1))
        self.validation_spin.setToolTip("Fraction held out for validation: of the images, or of each image's "
                                        "longer side for a band (at least a patch)")
        self.split_combo = QComboBox()
        for key, label in SPLIT_LABELS.items():
            self.split_combo.addItem(label, key)
        self.split_combo.setCurrentIndex(self.split_combo.findData(defaults["validation_split"]))
        self.split_combo.setToolTip("A band is separated from the training part by more than the network's "
                                    "receptive field; the run is calibrated on the validation data")
        self.split_combo.currentIndexChanged.connect(self._on_split_changed)
        self.val_input_combo, self.val_target_combo = QComboBox(), QComboBox()
        self.val_input_label, self.val_target_label = QLabel("Validation input"), QLabel("Validation target")
        self.preview_check = QCheckBox("show the held-out reconstruction at each validation")
        self.preview_check.setChecked(True)
        self.preview_check.setToolTip("A layer updated in place with the current model's reconstruction "
                                      "(one sample) of the validation data")
        self.validate_every_spin = spin_box(1, 1_000_000, defaults.get("validate_every", 100),
                                         "Validate (and draw a validation point) every this many steps")
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        form.addRow("Patch size", self.patch_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Validate on", self.split_combo)
        form.addRow(self.val_input_label, self.val_input_combo)
        form.addRow(self.val_target_label, self.val_target_combo)
        form.addRow("Validation fraction", self.validation_spin)
        form.addRow("Preview", self.preview_check)
        form.addRow("Validate every", self.validate_every_spin)
        form.addRow("Device", self.device_combo)
        return group

    def _build_buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train a new model, from random weights or from the 'Start from' model "
                                     "(overwrites the file at 'Save to')")
        self.start_button.clicked.connect(lambda: self.start(resume=False))
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step and save the model")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue training the model at 'Save to' where it stopped")
        self.resume_button.setEnabled(False)
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        for button in (self.start_button, self.stop_button, self.resume_button):
            row.addWidget(button)
        self.run_panel = RunPanel(self, [self.start_button], self.stop_button, on_buttons=self._update_resume,
                                  busy="Training is already running; press Stop first.",
                                  stopping="Stopping after this step…")
        return row

    # ------------------------------------------------------------------ choices
    def _on_source_changed(self, *_) -> None:
        from_layers = self.source_combo.currentText() == LAYERS_SOURCE
        for widget in (self.input_layer_label, self.input_layer_combo, self.target_layer_label,
                       self.target_layer_combo):
            widget.setVisible(from_layers)
        for widget in (self.input_dir_label, self._input_dir_row, self.target_dir_label, self._target_dir_row):
            widget.setVisible(not from_layers)
        self._refresh_layers()

    def _on_split_changed(self, *_) -> None:
        separate = self.split_combo.currentData() == SEPARATE_LAYERS
        for widget in (self.val_input_label, self.val_input_combo, self.val_target_label, self.val_target_combo):
            widget.setVisible(separate)
        self.validation_spin.setEnabled(not separate)

    def _on_task_changed(self, *_) -> None:
        task = self.task_name
        if task == "sr":
            hint = ("Input: widefield image(s) (…, h, w), raw or already on the target grid; "
                    "target: SIM image(s) (…, 2h, 2w). Stacks give one pair per plane.")
        else:
            hint = ("Input: defocus stack(s) (…, 2, H, W) = [I(−dz), I(+dz)]; target: phase in "
                    "radians (…, H, W). Stacks give one pair per plane.")
        self.data_hint.setText(hint)
        self._refresh_bases()  # also suggests the 'Save to' name
        self._update_base_correction()
        self._update_buttons()
        self._base_chosen = False
        self._suggest_start()

    @property
    def task_name(self) -> str:
        return self.task_combo.currentData()

    @property
    def base_model(self) -> Path | None:
        """The model file to fine-tune, or None to train from random weights."""
        return self.base_combo.currentData()

    def base_index(self, path: Path) -> int:
        """Index of a model file in 'Start from' (-1 if it is not offered); Qt's findData cannot compare paths."""
        path = Path(path).expanduser().resolve()
        return next((i for i in range(self.base_combo.count()) if self.base_combo.itemData(i) == path), -1)

    def _refresh_bases(self, *_) -> None:
        """Offer the readable models of the chosen task (shipped, trained, opened) as starting points."""
        current = self.base_combo.currentData()
        self.base_combo.blockSignals(True)
        self.base_combo.clear()
        self.base_combo.addItem("new model (random weights)", None)
        for entry in self.registry.entries():
            if entry.info is not None and entry.info.task == self.task_name:
                self.base_combo.addItem(entry.label, entry.path)
        index = self.base_index(current) if current is not None else 0
        if index < 0:
            notifications.show_warning(f"{current.name} is no longer offered for this task; "
                                       "'Start from' is back to a new model.")
        self.base_combo.setCurrentIndex(max(index, 0))
        self.base_combo.blockSignals(False)
        self._on_base_changed()

    def _note_base_choice(self, *_) -> None:
        if not self._suggesting:
            self._base_chosen = True

    def shipped_fit(self) -> tuple[Path | None, str]:
        """The task's shipped model when the chosen layers fit it (pixel size within its range), and why
        (or why not) as a sentence."""
        from ..engine import check_pixel_size
        from ..data.datasets import PIXEL_SIZE_TOLERANCE

        shipped = [e for e in self.registry.entries()
                   if e.origin == "shipped" and e.info is not None and e.info.task == self.task_name]
        if not shipped:
            return None, "No shipped model of this task: a new model is trained."
        entry = min(shipped, key=lambda e: e.info.config.formulation != "residual")  # the residual one first
        name, trained = entry.path.name, entry.info.input_pixel_size_um
        try:
            pixel = self._layer_input_pixel_size()
        except InputError:
            pixel = None
        if pixel is None or trained is None:
            return None, (f"New model: the layers carry no pixel size, so whether they fit {name} is unknown; "
                          f"choose it if their pixels are about {trained or '?'} µm.")
        if check_pixel_size(entry.info, pixel) is not None:
            return None, (f"New model: the layers' pixels ({pixel:.4g} µm) are outside {name}'s range "
                          f"({trained:.4g} µm ± {PIXEL_SIZE_TOLERANCE:.0%}).")
        return entry.path, (f"Fine-tuning {name}: the layers' pixels ({pixel:.4g} µm) are within its range "
                            f"({trained:.4g} µm ± {PIXEL_SIZE_TOLERANCE:.0%}), and {FINE_TUNE_STEPS} steps adapt "
                            "it to your structure; choose 'new model' to train from random weights.")

    def _suggest_start(self, *_) -> None:
        """Until the user picks 'Start from': preselect the shipped model that fits the layers (else a
        new model) and say why."""
        if self.source_combo.currentText() != LAYERS_SOURCE or not hasattr(self, "steps_spin"):
            self.start_hint.setText("")
            return
        path, reason = self.shipped_fit()
        self.start_hint.setText(reason if not self._base_chosen else "")
        if self._base_chosen:
            return
        self._suggesting = True
        try:
            self.base_combo.setCurrentIndex(max(self.base_index(path), 0) if path is not None else 0)
        finally:
            self._suggesting = False

    def _on_base_changed(self, *_) -> None:
        """A fine-tuned model keeps its base's size and schedule, so those choices are fixed to it.

        A suggested 'Save to' name follows the choice (``<base>_tuned``), so that the base is never
        the file a fine-tune overwrites; a name the user typed is kept.
        """
        path = self.base_model
        entry = self.registry.get(path) if path is not None else None
        fixed = entry is not None and entry.info is not None
        current = self.output_edit.text().strip()
        suggested = not current or _is_default_output(current)
        if fixed:
            self.preset_combo.setCurrentText(entry.info.config.preset)
            self.schedule_combo.setCurrentText(entry.info.config.schedule)
            self.formulation_combo.setCurrentText(entry.info.config.formulation)
            if suggested or Path(current).expanduser().resolve() == path:
                self.output_edit.setText(str(_DEFAULT_FOLDER / f"{path.stem}_tuned.safetensors"))
        elif suggested:
            self.output_edit.setText(str(_DEFAULT_FOLDER / f"{self.task_name}_model.safetensors"))
        self.preset_combo.setEnabled(not fixed)
        self.schedule_combo.setEnabled(not fixed)
        self.formulation_combo.setEnabled(not fixed)
        self._update_base_correction()
        if hasattr(self, "steps_spin"):  # a fine-tune takes fewer steps; a step count the user typed stays
            new_model_steps = _config_defaults()["steps"]
            if fixed and self.steps_spin.value() == new_model_steps:
                self.steps_spin.setValue(FINE_TUNE_STEPS)
            elif not fixed and self.steps_spin.value() == FINE_TUNE_STEPS:
                self.steps_spin.setValue(new_model_steps)

    def _update_base_correction(self, *_) -> None:
        """The base correction is offered for residual QPI models; a fine-tuned model that has one keeps it."""
        entry = self.registry.get(self.base_model) if self.base_model is not None else None
        base = base_for(entry.info.config) if entry is not None and entry.info is not None else None
        offered = (self.task_name == "qpi" and self.formulation_combo.currentText() == "residual"
                   and (base is None or base.needs_tie))
        kept = base is not None and base.corrects_tie
        if not offered or kept:
            self.correction_check.setChecked(kept)
        self.correction_check.setEnabled(offered and not kept)

    def _refresh_layers(self, *_) -> None:
        images = [layer for layer in self.viewer.layers
                  if is_candidate_image(layer) and not layer.name.endswith(OUTPUT_SUFFIXES)
                  and not layer.name.startswith(PREVIEW_NAME)]
        for combo, prefer in ((self.input_layer_combo, 0), (self.target_layer_combo, 1),
                              (self.val_input_combo, 0), (self.val_target_combo, 1)):
            fill_layer_combo(combo, images, prefer)
        self._suggest_start()

    def _ask_output_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the trained model as", self.output_edit.text(),
                                              "CVDM models (*.safetensors)")
        if path:
            if not path.endswith(".safetensors"):
                path += ".safetensors"
            self.output_edit.setText(path)

    def output_path(self) -> Path:
        text = self.output_edit.text().strip()
        if not text:
            raise InputError("Choose where to save the model (the 'Save to' field is empty).")
        path = Path(text).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        return path

    # ------------------------------------------------------------------ data
    def gather_pairs(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Input and target planes from the chosen layers (None when training from folders)."""
        if self.source_combo.currentText() != LAYERS_SOURCE:
            return None
        return self._layer_pairs(self.input_layer_combo.currentData(), self.target_layer_combo.currentData())

    def gather_validation(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Input and target planes of the separate validation layers (None unless chosen)."""
        if self.split_combo.currentData() != SEPARATE_LAYERS:
            return None
        return self._layer_pairs(self.val_input_combo.currentData(), self.val_target_combo.currentData(),
                                 "validation ")

    def _layer_pairs(self, source, target, role: str = "") -> tuple[list[np.ndarray], list[np.ndarray]]:
        if source is None or target is None or source not in self.viewer.layers or target not in self.viewer.layers:
            raise InputError(f"Choose a {role}input layer and a {role}target layer (open images first).")
        if source is target:
            raise InputError("The input and target layers are the same layer; choose the target image.")
        input_plane_ndim = 3 if self.task_name == "qpi" else 2
        if self.task_name == "qpi" and (source.ndim < 3 or source.data.shape[-3] != 2):
            raise InputError(f"Layer '{source.name}' has shape {source.data.shape}, but a QPI input must be a "
                             "defocus stack (…, 2, H, W).")
        inputs = split_planes(np.array(source.data, dtype=np.float32), input_plane_ndim)
        targets = split_planes(np.array(target.data, dtype=np.float32), 2)
        if len(inputs) != len(targets):
            raise InputError(f"Layer '{source.name}' holds {len(inputs)} image(s) but '{target.name}' holds "
                             f"{len(targets)}; they are paired plane by plane.")
        return inputs, targets

    def config(self, pairs_from_layers: bool) -> trainer.TrainConfig:
        """The training settings as the engine's config object."""
        values = dict(
            task=self.task_name, preset=self.preset_combo.currentText(),
            schedule=self.schedule_combo.currentText(), formulation=self.formulation_combo.currentText(),
            patch_size=self.patch_spin.value(),
            batch_size=self.batch_spin.value(), steps=self.steps_spin.value(),
            learning_rate=self.lr_spin.value(), validation_fraction=self.validation_spin.value(),
            validation_split=self.split_combo.currentData() if self.split_combo.currentData() in VALIDATION_SPLITS
            else "auto",
            validate_every=self.validate_every_spin.value(), device=self.device_combo.currentText(),
            output=str(self.output_path()),
            init_model=None if self.base_model is None else str(self.base_model),
            base_correction=self.correction_check.isChecked(),
        )
        if pairs_from_layers:
            values["input_pixel_size_um"] = self._layer_input_pixel_size()
            values["description"] = (f"trained in napari on layers '{self.input_layer_combo.currentText()}' → "
                                     f"'{self.target_layer_combo.currentText()}'")
        else:
            input_dir, target_dir = self.input_dir_edit.text().strip(), self.target_dir_edit.text().strip()
            if not input_dir or not target_dir:
                raise InputError("Choose the input folder and the target folder of TIFF pairs.")
            values.update(input_dir=input_dir, target_dir=target_dir)
        config = trainer.TrainConfig(**values)
        config.check()
        return config

    def _layer_input_pixel_size(self) -> float | None:
        """Raw-input pixel size (µm) from the calibrated layers, if any; InputError when the two disagree."""
        source, target = self.input_layer_combo.currentData(), self.target_layer_combo.currentData()
        if source is None or target is None:
            return None
        factor = 2 if self.task_name == "sr" else 1
        return raw_pixel_size(layer_pixel_size_um(source), layer_pixel_size_um(target), source.data.shape[-2:],
                              target.data.shape[-2:], factor,
                              f"Layer '{source.name}'", f"layer '{target.name}'")

    def run_dir(self) -> Path | None:
        """Folder of the run's checkpoints and log for the current 'Save to' path."""
        try:
            return trainer.TrainConfig(output=str(self.output_path())).run_dir
        except InputError:
            return None

    # ------------------------------------------------------------------ run
    def start(self, resume: bool = False) -> bool:
        """Start (or resume) training in the background; returns whether it started."""
        if self.run_panel.refuse_if_running():
            return False
        try:
            pairs = self.gather_pairs()
            validation = self.gather_validation()
            config = self.config(pairs_from_layers=pairs is not None)
        except (InputError, ValueError) as exc:
            notifications.show_error(str(exc))
            return False
        if resume and not (config.run_dir / trainer.STATE_FILE).is_file():
            notifications.show_error(f"Nothing to resume: {config.run_dir} holds no checkpoint; press Start.")
            return False
        if resume:  # a run continues from the model it was started from, whatever 'Start from' shows now
            config = dataclasses.replace(config, init_model=_run_init_model(config.run_dir))
        elif Path(config.output).expanduser().exists() or (config.run_dir / trainer.STATE_FILE).is_file():
            if not self.confirm_replace(Path(config.output)):
                return False
            config = dataclasses.replace(config, overwrite=True)
        self.loss_plot.clear()
        if resume:
            self._load_history(config.run_dir / trainer.LOG_FILE)
        self.loss_plot.total_steps = config.steps
        preview = self.preview_check.isChecked()
        self._preview_geometry = self._target_geometry() if pairs is not None else None

        def run(progress, should_stop, report):
            def on_progress(state):
                report(state)
                progress(state.step, state.total_steps)

            return trainer.train(config, pairs=pairs, progress=on_progress, should_stop=should_stop, resume=resume,
                                 validation=validation, preview=preview)

        self.run_panel.launch(run, f"CVDM: training {Path(config.output).name}",
                              "Resuming…" if resume else "Preparing data…",
                              on_done=self._finish, on_report=self._show_progress)
        return True

    def confirm_replace(self, path: Path) -> bool:
        """Ask before a new run replaces the model (and run folder) at 'Save to'."""
        answer = QMessageBox.question(
            self, "Replace model?", f"{path} (or its run folder) already exists. Replace it with a new run?\n"
            "Choose No to keep it (pick another 'Save to', or Resume that run).")
        return answer == QMessageBox.StandardButton.Yes

    def stop(self) -> None:
        """Ask training to stop after the current step; the model is saved and can be resumed."""
        self.run_panel.stop()

    @property
    def running(self) -> bool:
        return self.run_panel.running

    @property
    def task(self):
        """The current (or last) background training, if any."""
        return self.run_panel.task

    def _update_buttons(self, *_) -> None:
        self.run_panel.update_buttons()

    def _update_resume(self) -> None:
        run_dir = self.run_dir()
        resumable = run_dir is not None and (run_dir / trainer.STATE_FILE).is_file()
        self.resume_button.setEnabled(not self.running and resumable)

    def _load_history(self, log_path: Path) -> None:
        """Draw the curve of the run being resumed from its ``log.csv``."""
        if not log_path.is_file():
            return
        with log_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    step = int(row["step"])
                    if row.get("loss"):
                        self.loss_plot.add_training(step, float(row["loss"]))
                    if row.get("val_loss"):
                        self.loss_plot.add_validation(step, float(row["val_loss"]))
                except (KeyError, ValueError):
                    continue

    def _show_progress(self, state) -> None:
        losses = state.losses or {}
        train_loss = losses.get("loss")
        if train_loss is not None:
            self.loss_plot.add_training(state.step, float(train_loss))
        validation = state.validation or {}
        validation_loss = validation.get("loss")
        if validation_loss is not None:
            self.loss_plot.add_validation(state.step, float(validation_loss))
        text = f"Step {state.step} of {state.total_steps}"
        if train_loss is not None:
            text += f" · loss {float(train_loss):.4g}"
        if validation_loss is not None:
            text += f" · validation {float(validation_loss):.4g}"
        text += f" · {format_duration(state.elapsed_s)} elapsed · ETA {format_duration(state.eta_s)}"
        self.run_panel.show_progress(state.step, state.total_steps, text)
        if getattr(state, "preview", None) is not None:
            self.show_preview(state.preview)

    def _target_geometry(self) -> tuple[tuple, tuple]:
        """Scale and translate of the target layer's image plane (where a preview is drawn)."""
        target = self.target_layer_combo.currentData()
        return tuple(target.scale[-2:]), tuple(target.translate[-2:])

    def show_preview(self, preview) -> None:
        """Show a :class:`napari_cvdm.train.Preview` in one layer, updated in place, over the held-out
        data of the target layer when training from layers."""
        image = preview.image[0] if preview.image.shape[0] == 1 else preview.image
        scale, translate = self._preview_geometry or ((1.0, 1.0), (0.0, 0.0))
        origin = tuple(t + o * s for t, o, s in zip(translate, preview.offset, scale))
        name = f"{PREVIEW_NAME} (step {preview.step})"
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers:
            self.preview_layer = self.viewer.add_image(image, name=name, scale=scale, translate=origin,
                                                       colormap="gray", metadata={"source": preview.source})
            return
        layer.data = image
        layer.translate = origin
        layer.name = name
        layer.metadata = {"source": preview.source, "step": preview.step}

    def _finish(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            self.run_panel.failed(describe_failure(outcome.error, "Training"))
            return
        result = self.last_result = outcome.value
        path = Path(result.model_path)
        if not result.exported:
            message = "Training stopped before its first step; nothing was saved."
            self.run_panel.succeeded(message)
            notifications.show_info(message)
            return
        entry = self.registry.add(path, "trained")
        if result.stopped:
            message = f"Training stopped at step {result.steps_done}; the model is saved to {path} (Resume continues)."
        else:
            message = f"Training finished after {result.steps_done} steps; the model is saved to {path}."
        message += _split_words(entry)
        self.run_panel.succeeded(message)
        notifications.show_info(message)


_DEFAULT_FOLDER = Path.home() / "napari-cvdm"


def _is_default_output(text: str) -> bool:
    """Whether 'Save to' still holds a name the widget suggested (so it may suggest another)."""
    path = Path(text).expanduser()
    return path.parent == _DEFAULT_FOLDER and (
        path.name in {f"{t}_model.safetensors" for t in TASK_LABELS} or path.stem.endswith("_tuned"))


def _config_defaults() -> dict:
    """Default values of TrainConfig's fields (those that have one)."""
    defaults = {}
    for item in dataclasses.fields(trainer.TrainConfig):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults


def _split_words(entry) -> str:
    """`` Validation: <how it was held out>; calibrated.`` from a trained model's card ('' if unknown)."""
    info = entry.info if entry is not None else None
    split = (info.training or {}).get("validation_split", {}) if info is not None else {}
    if not split.get("words"):
        return ""
    return f" Validation: {split['words']}" + ("; calibrated on it." if info.calibration else ".")


def _run_init_model(run_dir: Path) -> str | None:
    """The model file a run was fine-tuned from, as its ``config.json`` records (None: from scratch)."""
    import json

    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("init_model")
    except (OSError, ValueError, AttributeError):
        return None


def _folder_row(parent: QWidget, tooltip: str) -> tuple[QLineEdit, QWidget]:
    edit = QLineEdit()
    edit.setToolTip(tooltip)
    button = QPushButton("…")
    button.setMaximumWidth(32)

    def browse():
        folder = QFileDialog.getExistingDirectory(parent, tooltip, edit.text())
        if folder:
            edit.setText(folder)

    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    container = QWidget()
    container.setLayout(row)
    return edit, container
