"""File sinks of the reconstruction job: every output plane goes to disk as soon as it is finished.

Each output is written under a partial name (``.<name>.partial``) and renamed to its final name
once complete, with the JSON sidecar, so an interrupted run never leaves a half-written output under
a final name. With a :class:`~napari_cvdm.io.progress.Progress`, each finished plane is recorded,
and a stopped run continues from there (``--resume``). :class:`TiffSink` writes ImageJ TIFFs;
:class:`~napari_cvdm.io.omezarr.ZarrSink` OME-Zarr stores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import tifffile

from ..errors import InputError
from .progress import Progress


def partial_path(path: Path) -> Path:
    """Where output ``path`` is written until it is complete."""
    return path.with_name(f".{path.name}.partial")


def _target(sink, name: str) -> Path:
    return sink.paths[name] if sink.in_place else partial_path(sink.paths[name])


class FileSink:
    """What the file sinks share: partial names, the progress of a resumable run, the sidecar.

    ``paths[name]``: each output's final path (``in_place``: written there directly); a subclass creates (``_create``) and opens
    (``_attach``) an output's partial file, and writes planes (``put``)."""

    def __init__(self, paths: dict[str, Path], sidecar: Path, progress: Progress | None = None,
                 in_place: bool = False):
        self.paths, self.sidecar, self.progress = {n: Path(p) for n, p in paths.items()}, Path(sidecar), progress
        self.in_place = in_place  # written under the final names (read while they grow), never renamed
        self.layout: dict = {}
        self.written: dict[str, Path] = {}
        self.finished: set[int] | None = None  # planes in the files (this run's and a resumed run's) once open

    def open(self, layout: dict) -> dict[int, dict]:
        """Create (or, resuming, reopen) every output's partial file; the planes already finished."""
        self.layout = {name: plan for name, plan in layout.items() if name in self.paths}
        done = self.progress.start() if self.progress is not None else {}
        missing = [_target(self, name) for name in self.layout if not _target(self, name).exists()]
        if done and missing:
            raise InputError(f"--resume: the stopped run's {missing[0].name} is missing; "
                             "use --overwrite to start again.")
        for name, plan in self.layout.items():
            self.paths[name].parent.mkdir(parents=True, exist_ok=True)
            if not done:
                _remove(_target(self, name))
                self._create(name, plan, _target(self, name))
            self._attach(name, plan, _target(self, name))
        self.finished = set(done)
        return done

    def plane_done(self, plane: int, record: dict) -> None:
        self.finished.add(plane)
        if self.progress is not None:
            self.progress.add(plane, record)

    def discard_if_empty(self) -> None:
        """Remove the partial outputs and the progress file of a run that opened them and stopped before
        finishing any plane: there is nothing to resume (e.g. a NaN in the first plane). A run refused
        at ``open`` (another run's state) touches nothing."""
        if self.finished is None or self.finished or self.in_place:
            return
        for name in self.layout:
            _remove(partial_path(self.paths[name]))
        if self.progress is not None:
            self.progress.path.unlink(missing_ok=True)

    def close(self, prediction) -> None:
        """Give every output its final name, write the sidecar, forget the progress."""
        from . import write_sidecar

        for name in self.layout:
            final = self.paths[name]
            if not self.in_place:
                _remove(final)  # replaced only where the caller allowed it (--overwrite)
                os.replace(partial_path(final), final)
            self.written[name] = final
        self.written["sidecar"] = write_sidecar(self.sidecar, {
            **prediction.record, "outputs": {name: p.name for name, p in self.written.items() if name != "sidecar"}})
        if self.progress is not None:
            self.progress.finish()

    def _create(self, name: str, plan, path: Path) -> None:
        raise NotImplementedError

    def _attach(self, name: str, plan, path: Path) -> None:
        raise NotImplementedError


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def samples_first(shape: tuple[int, ...], n_lead: int) -> tuple[int, ...]:
    """The samples' shape with their N axis (after ``n_lead`` leading axes) moved first."""
    return (shape[n_lead], *shape[:n_lead], *shape[n_lead + 1:])


class TiffSink(FileSink):
    """Writes a prediction's outputs as ImageJ float32 TIFFs (``paths[name]``) and its record as the JSON
    ``sidecar``, each plane into the file as it comes (the file is memory-mapped one plane at a time).

    ``axes``: the outputs' ImageJ axes (None: the default for their dimensions); the samples are
    written with their N first, as frames (T) unless the input is a time series itself;
    ``written`` lists the files by output name once closed.
    """

    def __init__(self, paths: dict[str, Path], sidecar: Path, axes: str | None = None,
                 progress: Progress | None = None):
        super().__init__(paths, sidecar, progress)
        self.axes = axes
        self._files: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}

    def _file_shape_axes(self, name: str, plan) -> tuple[tuple[int, ...], str | None]:
        from . import _default_axes

        shape, axes = plan.shape, self.axes
        if name == "samples":
            shape = samples_first(shape, plan.n_lead)
            axes = "T" + axes if axes is not None and "T" not in axes else None
        return shape, axes or _default_axes(len(shape))

    def _create(self, name: str, plan, path: Path) -> None:
        shape, axes = self._file_shape_axes(name, plan)
        metadata: dict = {"axes": axes}
        kwargs: dict = {}
        if plan.pixel_size_um is not None:
            kwargs["resolution"] = (1.0 / plan.pixel_size_um, 1.0 / plan.pixel_size_um)
            metadata["unit"] = "um"
        image = tifffile.memmap(path, shape=shape, dtype=np.float32, imagej=True, metadata=metadata, **kwargs)
        image.flush()
        del image

    def _attach(self, name: str, plan, path: Path) -> None:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                offset, dtype, shape = series.dataoffset, series.dtype, tuple(series.shape)
        except (tifffile.TiffFileError, OSError, IndexError) as exc:
            raise InputError(f"--resume: cannot reopen {path.name} ({exc}); use --overwrite to start again.") from None
        if offset is None or shape != self._file_shape_axes(name, plan)[0]:
            raise InputError(f"--resume: {path.name} is not the stopped run's output; use --overwrite to start again.")
        self._files[name] = (offset, dtype, shape)

    def put(self, name: str, plane: int, planes: int, data: np.ndarray) -> None:
        if name not in self._files:
            return
        offset, dtype, shape = self._files[name]
        index = plane
        if name == "samples":  # C order of (lead, N, [C]) → of (N, lead, [C])
            order = self.layout[name].shape[:-2]
            position = list(np.unravel_index(plane, order))
            n_lead = self.layout[name].n_lead
            index = int(np.ravel_multi_index([position[n_lead], *position[:n_lead], *position[n_lead + 1:]],
                                             samples_first(order, n_lead)))
        size = shape[-2] * shape[-1]
        view = np.memmap(_target(self, name), dtype=dtype, mode="r+",
                         offset=offset + index * size * dtype.itemsize, shape=shape[-2:])
        view[...] = data
        view.flush()
        del view
