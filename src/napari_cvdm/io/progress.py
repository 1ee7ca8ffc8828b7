"""A stopped run's state, so that ``--resume`` continues it: what it was (its fingerprint) and the planes it finished.

One small JSON file per input next to its outputs (``.<stem>_cvdm.progress.json``), rewritten
atomically after every finished plane and removed once the outputs are complete. The fingerprint
names the model (its file's SHA-256), the settings, the input (path, shape, dtype and a digest of its
first and last planes) and the output format: a resumed run must match it in every field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..checkpoint import write_atomically
from ..errors import InputError

#: What each fingerprint field is called in the one-line refusal.
_WHAT = {"model": "another model", "settings": "other settings", "input": "another input",
         "acquisition": "another pixel size or optics", "format": "another --format", "outputs": "other outputs"}


def progress_path(sidecar: Path) -> Path:
    """The progress file of the outputs whose sidecar is ``sidecar``."""
    return sidecar.with_name(f".{sidecar.stem}.progress.json")


def file_digest(path: str | Path, chunk: int = 2**20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def input_fingerprint(path: str | Path, image) -> dict:
    """Path, shape, dtype and a digest of the first and last 2-D planes of ``image`` (read lazily)."""
    shape = tuple(int(n) for n in image.shape)
    flat = (int(np.prod(shape[:-2], dtype=np.int64)), *shape[-2:])
    digest = hashlib.sha256()
    for index in {0, flat[0] - 1}:
        where = tuple(int(i) for i in np.unravel_index(index, shape[:-2])) if len(shape) > 2 else ()
        digest.update(np.ascontiguousarray(np.asarray(image[where])).tobytes())
    return {"path": str(Path(path).resolve()), "shape": list(shape), "dtype": str(np.dtype(image.dtype)),
            "planes_sha256": digest.hexdigest()}


class Progress:
    """The progress file of one input's outputs: ``start()`` (the planes a stopped run finished, when
    resuming), ``add(plane, record)`` after each plane, ``finish()`` once the outputs are complete."""

    def __init__(self, path: Path, fingerprint: dict, resume: bool = False):
        self.path, self.fingerprint, self.resume = Path(path), fingerprint, resume
        self.planes: dict[int, dict] = {}

    def start(self) -> dict[int, dict]:
        """The finished planes' records ({} for a fresh run); InputError when a resumed run differs."""
        if self.resume and self.path.exists():
            try:
                state = json.loads(self.path.read_text())
                stored, planes = state["fingerprint"], state["planes"]
            except (OSError, ValueError, KeyError, TypeError):
                raise InputError(f"the stopped run's state {self.path.name} is damaged; "
                                 "use --overwrite to start again.") from None
            differs = [key for key in _WHAT if stored.get(key) != _json(self.fingerprint.get(key))]
            if differs:
                raise InputError(f"--resume: the stopped run used {', '.join(_WHAT[k] for k in differs)}; "
                                 "use the same ones, or --overwrite to start again.")
            self.planes = {int(p): record for p, record in planes.items()}
        self._save()
        return dict(self.planes)

    def add(self, plane: int, record: dict) -> None:
        self.planes[int(plane)] = record
        self._save()

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        state = {"fingerprint": self.fingerprint, "planes": {str(p): r for p, r in sorted(self.planes.items())}}
        write_atomically(self.path, (json.dumps(state, indent=1, default=str) + "\n").encode())


def _json(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
