"""Turn an exception from background work into one sentence for a napari notification."""

from __future__ import annotations

import logging

from ..errors import CVDMError

logger = logging.getLogger("napari_cvdm")


def is_out_of_memory(error: BaseException) -> bool:
    """GPU (CUDA/MPS) or host memory exhausted."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def describe_failure(error: BaseException, what: str, tile_size: int | None = None) -> str:
    """One readable sentence; unexpected errors are also logged with their traceback.

    ``what`` names the work, e.g. ``"Reconstruction"``; ``tile_size`` (when the
    work was tiled) goes into the out-of-memory hint.
    """
    if is_out_of_memory(error):
        hint = f"use a smaller tile size than {tile_size}" if tile_size else "use smaller patches or batches"
        return f"{what} ran out of memory on the device: {hint}, fewer samples, or the CPU."
    if isinstance(error, CVDMError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{what} failed: file not found: {error.filename or error}."
    logger.error("%s failed", what, exc_info=(type(error), error, error.__traceback__))
    return f"{what} failed unexpectedly ({type(error).__name__}: {error})."
