"""The models the Reconstruct widget can pick: shipped, opened and trained ones.

One registry per process (:data:`MODEL_REGISTRY`) is shared by the Reconstruct
and Train widgets; its ``changed`` signal tells pickers to refresh, so a model
saved by the Train widget appears in the Reconstruct picker at once. Only the
metadata is read (:func:`napari_cvdm.checkpoint.read_model_info`), never the
weights. A file that cannot be read stays listed with its error, so choosing it
explains what is wrong instead of silently hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from ..residual import formulation_words
from ..checkpoint import MODEL_SUFFIX, ModelInfo, read_model_info
from ..errors import ModelFileError

#: Where a model came from, in the order the picker lists them.
ORIGINS = ("shipped", "trained", "opened")


def shipped_model_dirs() -> list[Path]:
    """Folders holding the models shipped with napari-cvdm that exist on this install.

    The repository's ``models/`` folder (editable install) and a ``models``
    folder inside the package (wheel install).
    """
    package_dir = Path(__file__).resolve().parents[1]
    candidates = [package_dir / "models", package_dir.parents[1] / "models"]
    return [folder for folder in candidates if folder.is_dir()]


@dataclass
class ModelEntry:
    """One model file: its metadata, or why it cannot be used."""

    path: Path
    origin: str
    info: ModelInfo | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """Text shown in a picker, e.g. ``biosr_mt.safetensors (sr, shipped)``."""
        if self.info is None:
            return f"{self.path.name} (unreadable)"
        return f"{self.path.name} ({self.info.task}, {self.origin})"


def read_entry(path: Path, origin: str) -> ModelEntry:
    """Read a model's metadata; a damaged or foreign file becomes an entry with ``error``."""
    try:
        return ModelEntry(path, origin, info=read_model_info(path))
    except ModelFileError as exc:
        return ModelEntry(path, origin, error=str(exc))
    except Exception as exc:  # anything else unreadable must not break a picker
        return ModelEntry(path, origin, error=f"{path.name} cannot be read: {exc}")


def model_card(entry: ModelEntry) -> str:
    """A few plain-text lines describing a model for the picker (task, pixel size, training data)."""
    if entry.info is None:
        return entry.error or f"{entry.path.name} cannot be read."
    info = entry.info
    task = {"sr": "widefield → super-resolution", "qpi": "defocus stack → phase (rad)",
            "generic": "generic image-to-image"}[info.task]
    lines = [f"Task: {task} (×{info.upsampling_factor})" if info.upsampling_factor > 1 else f"Task: {task}"]
    if info.input_pixel_size_um is not None:
        lines.append(f"Pixel: {info.input_pixel_size_um * 1000:.1f} nm in → "
                     f"{info.output_pixel_size_um * 1000:.1f} nm out")
    lines.append(f"Network: {info.config.preset}, schedule {info.config.schedule}")
    lines.append("Formulation: " + formulation_words(info))
    sampler = info.sampler or {}
    if sampler:
        lines.append(f"Sampler: {sampler.get('name', '?')}, {sampler.get('steps', '?')} steps, "
                     f"N = {sampler.get('n_samples', '?')}")
    training = info.training or {}
    trained_on = training.get("data") or training.get("dataset")
    if trained_on:
        lines.append(f"Trained on: {trained_on}")
    if training.get("steps"):
        base = training.get("fine_tuned_from") or {}
        tuned = ""
        if base.get("file"):
            tuned = f" (fine-tuned from {base['file']}" + (f", {base['steps']} steps)" if base.get("steps") else ")")
        lines.append(f"Training steps: {training['steps']}{tuned}")
    if info.description:
        lines.append(info.description)
    return "\n".join(lines)


class ModelRegistry:
    """Model files known since napari started, keyed by resolved path.

    ``changed`` is emitted (no arguments) whenever the list changes.
    """

    changed = Signal()

    def __init__(self, shipped_dirs: list[Path] | None = None):
        self._shipped_dirs = shipped_model_dirs() if shipped_dirs is None else list(shipped_dirs)
        self._entries: dict[Path, ModelEntry] = {}
        self.rescan()

    def rescan(self) -> None:
        """Re-read the shipped folders and every known file's metadata."""
        entries = {}
        for folder in self._shipped_dirs:
            for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
                entries[path.resolve()] = read_entry(path.resolve(), "shipped")
        for path, entry in self._entries.items():
            if entry.origin != "shipped" and path not in entries:
                entries[path] = read_entry(path, entry.origin)
        self._entries = entries
        self.changed.emit()

    def add(self, path: str | Path, origin: str = "opened") -> ModelEntry:
        """Add (or refresh) one file and return its entry; emits ``changed``."""
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}; expected one of {ORIGINS}")
        path = Path(path).expanduser().resolve()
        previous = self._entries.get(path)
        if previous is not None and previous.origin == "shipped":
            origin = "shipped"
        entry = read_entry(path, origin)
        self._entries[path] = entry
        self.changed.emit()
        return entry

    def remove(self, path: str | Path) -> None:
        """Forget a file (it is not deleted); emits ``changed``."""
        if self._entries.pop(Path(path).expanduser().resolve(), None) is not None:
            self.changed.emit()

    def get(self, path: str | Path) -> ModelEntry | None:
        return self._entries.get(Path(path).expanduser().resolve())

    def entries(self) -> list[ModelEntry]:
        """All entries: shipped first, then trained, then opened; by name within each."""
        return sorted(self._entries.values(), key=lambda e: (ORIGINS.index(e.origin), e.path.name, str(e.path)))


#: The registry shared by every widget of this process.
MODEL_REGISTRY = ModelRegistry()
