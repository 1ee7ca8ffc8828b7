"""The reconstruction job spread over dask.distributed workers, one plane per task.

``cvdm predict --workers N`` starts a LocalCluster of N single-threaded processes; ``--scheduler
ADDRESS`` joins a running scheduler (e.g. dask-jobqueue's on SLURM). Each worker loads the model
once and, where there are GPUs, uses GPU ``(worker number) mod (GPUs)``. A task reconstructs one
plane of the input, read by the worker itself (one plane of an OME-Zarr, or the TIFF), with the
same seed and plane index as a single process: the noise is keyed to its position, so the result
does not depend on how the planes are spread. The planes come back to this process, which writes
them through the job's file sink as they finish (any order) and reports one progress line. A task
whose worker dies is redone elsewhere (dask's ``allowed_failures``); when none is left, the run
stops in one line and the finished planes stay for ``--resume``.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import InputError

#: Seconds without any worker after which a run stops.
NO_WORKER_TIMEOUT_S = 60.0
_MODELS: dict = {}


def connect(workers: int | None, scheduler: str | None):
    """A dask Client: to ``scheduler`` when given, else to a new LocalCluster of ``workers`` processes."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--workers and --scheduler need dask.distributed: pip install 'napari-cvdm[distributed]'.") \
            from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc}).") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster)


def _worker_device(device: str) -> str:
    """This worker's device: its own GPU (worker number mod GPUs) for ``auto``/``cuda`` where there are GPUs."""
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    from dask.distributed import get_worker

    name = str(get_worker().name)
    index = int(name) if name.isdigit() else abs(hash(name))
    return f"cuda:{index % torch.cuda.device_count()}"


def plane_task(model_path: str, input_path: str, p: int, settings: dict, acquisition: dict, threads: int):
    """On a worker: reconstruct plane ``p`` of the input; ``(arrays, record, metadata)`` of that plane."""
    import torch

    from .acquisition import Acquisition
    from .checkpoint import load_model
    from .cli_predict import read_input
    from .engine import reconstruct
    from .engine.checks import plane_count
    from .engine.settings import ReconstructionSettings
    from .plane_outputs import PlaneOutputs

    torch.set_num_threads(max(1, threads))
    settings = ReconstructionSettings(**{**settings, "device": _worker_device(settings["device"])})
    key = (model_path, settings.device)
    if key not in _MODELS:
        _MODELS[key] = load_model(model_path, settings.device)
    model, info = _MODELS[key]
    image = read_input(Path(input_path), acquisition["pixel_size_um"]).array
    acquisition = Acquisition(**acquisition)
    planes = PlaneOutputs(info, settings, acquisition)
    out = {}

    def on_plane(index, result, raw):
        out["arrays"], out["metadata"] = planes.plane(index, result, raw), result.metadata

    skip = frozenset(range(plane_count(info, image))) - {p}
    reconstruct(model, info, image, settings, input_pixel_size_um=acquisition.pixel_size_um,
                wavelength_um=acquisition.wavelength_um, dz_um=acquisition.dz_um, na=acquisition.na,
                on_plane=on_plane, skip=skip,
                values_checked=True)  # by predict_distributed; a lazy input's plane p is checked as read
    return out["arrays"], planes.records[p], out["metadata"]


def predict_distributed(client, model_path: str | Path, info, image, acquisition, settings, hooks, sink):
    """The job of ``image`` (an ``ImageData`` read from a file) over ``client``'s workers into the file
    ``sink``; the planes the sink already holds (a resumed run) are skipped. Returns the Prediction."""
    from dataclasses import asdict

    import torch

    from .engine.checks import plane_count
    from .plane_outputs import PlaneOutputs, output_layout
    from .predict import deliver_plane, finish_planes, start_job

    start_job(info, image.array, acquisition, settings, hooks)
    layout = output_layout(info, image.array, settings, acquisition.pixel_size_um)
    done = dict(sink.open(layout) or {})
    planes = PlaneOutputs(info, settings, acquisition, records=done)
    count = plane_count(info, image.array)
    futures = {client.submit(plane_task, str(model_path), str(image.path), p, asdict(settings), asdict(acquisition),
                             torch.get_num_threads(), pure=False): p for p in range(count) if p not in done}
    metadata = None
    try:
        for future, (arrays, record, metadata) in _as_finished(client, futures):
            planes.records[futures[future]] = record
            deliver_plane(sink, layout, futures[future], arrays, record)
            if hooks.progress is not None:
                hooks.progress(len(planes.records), count)
    except BaseException:
        client.cancel(list(futures))
        raise
    result = _reconstruction(info, acquisition, metadata or _metadata_alone(model_path, info, image, settings,
                                                                            acquisition))
    return finish_planes(result, planes, layout, info, image.array, acquisition, hooks, sink, model_path)


def _as_finished(client, futures: dict):
    """Yield ``(future, its result)`` as each finishes; InputError (one line) when a plane's workers kept
    dying or no worker is left for :data:`NO_WORKER_TIMEOUT_S`. A result is fetched with a timeout: a
    worker that leaves between finishing and handing over sends its plane back to be computed again."""
    from dask.distributed import wait

    pending, alone_since = set(futures), None
    while pending:
        try:
            finished, pending = wait(pending, timeout=2.0, return_when="FIRST_COMPLETED")
        except TimeoutError:  # none finished within 2 s: see that workers are left
            finished = set()
        for future in finished:
            if future.status == "error" and type(future.exception()).__name__ == "KilledWorker":
                raise InputError(f"the workers running plane {futures[future]} died repeatedly; the finished planes "
                                 "are kept: run again with --resume.")
            try:
                value = future.result(timeout=2.0)
            except TimeoutError:  # its worker left with the result: the plane is computed again
                pending.add(future)
                continue
            yield future, value
        if not client.scheduler_info().get("workers"):
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since > NO_WORKER_TIMEOUT_S:
                raise InputError(f"no dask worker left for {NO_WORKER_TIMEOUT_S:.0f} s; the finished planes are "
                                 "kept: run again with --resume once workers are back.")
        else:
            alone_since = None


def _reconstruction(info, acquisition, metadata: dict):
    """A streamed job's Reconstruction: no arrays, the workers' metadata."""
    from .engine import Reconstruction

    pixel = acquisition.pixel_size_um if acquisition.pixel_size_um is not None else info.input_pixel_size_um
    factor = int(info.upsampling_factor)
    return Reconstruction(None, None, None, None, factor, None if pixel is None else pixel / factor,
                          info.target_unit, dict(metadata))


def _metadata_alone(model_path, info, image, settings, acquisition) -> dict:
    """The resolved settings of a run whose planes were all finished before (nothing left to compute)."""
    from .checkpoint import load_model
    from .engine import reconstruct
    from .engine.checks import plane_count

    model, _ = load_model(model_path, "cpu")
    skip = frozenset(range(plane_count(info, image.array)))
    return reconstruct(model, info, image.array, settings, input_pixel_size_um=acquisition.pixel_size_um,
                       wavelength_um=acquisition.wavelength_um, dz_um=acquisition.dz_um, na=acquisition.na,
                       on_plane=lambda *a: None, skip=skip, values_checked=True).metadata
