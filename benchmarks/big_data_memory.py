"""Peak memory of ``cvdm predict`` on a QPI series (T, 2, 512, 512): does it grow with T?

    PYTHONPATH=src nice .venv/bin/python benchmarks/big_data_memory.py --frames 4 64 \\
        --previous /path/to/an/older/checkout/src

Each run is one ``cvdm predict`` process (N = 4, ``--steps 2``, CPU, one process). Its peak
resident memory is the child's ``ru_maxrss``; its resident memory after the first and the last
plane says whether memory accumulates across planes (it would rise) or only peaks within one. This
checkout reads the series as OME-Zarr and as an ImageJ TIFF (each output in its input's format); a
``--previous`` checkout (which may read TIFF only) reads the same TIFF. ``--model tiny`` runs an
untrained model of the ``tiny`` preset with the shipped residual QPI model's settings (TIE base, λ
at ¼ resolution): the job's own buffers do not depend on the network's size, and a frame then
takes seconds, not minutes, on a CPU; ``--model shipped`` runs the shipped model.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PREDICT = ["--n-samples", "4", "--steps", "2", "--device", "cpu", "--seed", "1", "--overwrite"]


def write_inputs(folder: Path, frames: int, side: int) -> tuple[Path, Path]:
    """The same seeded defocus series as OME-Zarr (NGFF 0.5, 0.21 µm) and as an ImageJ TIFF."""
    sys.path.insert(0, str(ROOT / "src"))
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    from napari_cvdm.io import write_image

    rng = np.random.default_rng(0)
    series = (100 + 5 * rng.standard_normal((frames, 2, side, side))).astype(np.float32)
    store, tiff = folder / f"series-{frames}.ome.zarr", folder / f"series-{frames}.tif"
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.create_array("0", shape=series.shape, dtype="float32", chunks=(1, 2, side, side),
                       dimension_names=["t", "c", "y", "x"])[...] = series
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 0.21, 0.21]}]}], axes=axes)
    write_image(tiff, series, pixel_size_um=0.21, axes="TCYX")
    return store, tiff


def tiny_model(folder: Path) -> Path:
    """An untrained ``tiny`` model with the shipped residual QPI model's settings."""
    sys.path.insert(0, str(ROOT / "src"))
    from napari_cvdm.checkpoint import ModelInfo, load_model, save_model
    from napari_cvdm.model import CVDM, ModelConfig

    _, shipped = load_model(ROOT / "models" / "cvdm-qpi-residual.safetensors", "cpu")
    config = ModelConfig(**{**shipped.config.to_dict(), "preset": "tiny"})
    info = ModelInfo(**{**shipped.__dict__, "config": config})
    return save_model(folder / "tiny-qpi.safetensors", CVDM(config), info)


#: ``cvdm predict`` that also says its resident memory after each finished plane (``rss after plane P: M``).
CHILD = """
import os, sys
import napari_cvdm.predict as job
deliver = job.deliver_plane
def deliver_and_say(*args):
    deliver(*args)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    print(f"rss after plane {args[2]}: {pages * os.sysconf('SC_PAGE_SIZE') / 2**20:.0f}", file=sys.stderr)
job.deliver_plane = deliver_and_say
from napari_cvdm.cli import main
sys.exit(main())
"""


def peak_mib(src: Path, image: Path, model: Path, out: Path) -> tuple[float, float, list[float]]:
    """(peak RSS in MiB, seconds, RSS after each plane) of one ``cvdm predict`` process with ``src`` on its
    path. The resident memory between planes tells a growing one (it rises) from the peak of one plane's work."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD,
                              "predict", str(image), "--model", str(model), "--out", str(out), *PREDICT],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"cvdm predict failed: {err[-2000:]}")
    between = [float(line.rsplit(":", 1)[1]) for line in err.splitlines() if line.startswith("rss after plane")]
    return usage.ru_maxrss / 1024, time.perf_counter() - start, between


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--model", choices=["tiny", "shipped"], default="tiny")
    parser.add_argument("--previous", type=Path, help="src folder of an older checkout, run on the TIFF")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvdm-big-data-memory"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.work) if args.model == "tiny" else ROOT / "models" / "cvdm-qpi-residual.safetensors"
    print(f"CPU {platform.processor() or platform.machine()}, model {args.model}, N = 4, 2 steps, "
          f"(T, 2, {args.side}, {args.side})", flush=True)
    for frames in args.frames:
        store, tiff = write_inputs(args.work, frames, args.side)
        runs = [("this checkout, OME-Zarr", ROOT / "src", store), ("this checkout, TIFF", ROOT / "src", tiff)]
        if args.previous is not None:
            runs.append(("previous, TIFF", args.previous, tiff))
        for run, (label, src, image) in enumerate(runs):
            peak, seconds, between = peak_mib(src, image, model, args.work / f"out-{frames}-{run}")
            rise = f"{between[0]:.0f} → {between[-1]:.0f} MiB" if between else "not reported"
            print(f"T = {frames:3d}  {label:24s} peak RSS {peak:7.0f} MiB  ({seconds:.0f} s); between planes, "
                  f"first → last: {rise}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
