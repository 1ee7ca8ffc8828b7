"""Big data through ``cvdm predict``: OME-Zarr in and out, plane-by-plane outputs equal to the whole job's,
resume after a stop, and bad input (one line, nothing of the user's replaced)."""

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_cvdm.checkpoint import load_model
from napari_cvdm.cli import main
from napari_cvdm.engine import ReconstructionSettings
from napari_cvdm.io import read_image, write_image
from napari_cvdm.io.omezarr import read_ome_zarr
from napari_cvdm.predict import Acquisition, MemorySink, predict

FAST = ["--n-samples", "2", "--steps", "2", "--device", "cpu", "--tile-size", "0", "--seed", "3"]
AXES = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]




def _series(frames=3, height=24, width=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1 + 0.1 * rng.standard_normal((frames, 2, height, width))).astype(np.float32)


def write_store(path, array, axes=AXES, pixel=0.21, version="0.5"):
    """An OME-Zarr image of ``array`` with ``pixel`` µm in y and x (two levels), NGFF ``version``."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    names = [a["name"] for a in axes]
    for k in range(2):
        level = array[..., :: 2**k, :: 2**k]
        group.create_array(str(k), shape=level.shape, dtype=level.dtype, chunks=(1,) * (level.ndim - 2) + level.shape[-2:],
                           **({"dimension_names": names} if version == "0.5" else {}))[...] = level
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * (array.ndim - 2) + [pixel * 2**k] * 2}]} for k in range(2)]
    write_multiscales_metadata(group, datasets, fmt=FormatV05() if version == "0.5" else FormatV04(), axes=axes)
    return path


def _run_failing(capsys, argv, *words):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if "step" not in line and "): plane " not in line]  # progress aside
    assert len(lines) == 1 and lines[0].startswith(f"cvdm {argv[0]}: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_ome_zarr_is_read_lazily_at_full_resolution_with_axes_and_pixel_size(tmp_path, version):
    store = write_store(tmp_path / "a.ome.zarr", _series(), version=version)
    image = read_ome_zarr(store)
    assert not isinstance(image.array, np.ndarray) and image.array.shape == (3, 2, 24, 20)
    assert image.axes == "TCYX" and image.pixel_size_um == pytest.approx(0.21)
    np.testing.assert_array_equal(np.asarray(image.array), _series())


def test_plane_by_plane_outputs_equal_the_whole_jobs_bitwise(tmp_path, models):
    model, info = load_model(models["qpi"], "cpu")
    image = _series()
    settings = ReconstructionSettings(n_samples=2, steps=2, device="cpu", tile_size=None, seed=3, keep_samples=True)
    whole = MemorySink()
    predict(model, info, image, Acquisition(pixel_size_um=0.21), settings, sink=whole)
    from napari_cvdm.io.sinks import TiffSink

    paths = {name: tmp_path / f"{name}.tif" for name in whole.arrays}
    predict(model, info, image, Acquisition(pixel_size_um=0.21), settings, sink=TiffSink(paths, tmp_path / "s.json"))
    for name, array in whole.arrays.items():
        written = tifffile.imread(paths[name])
        expected = np.moveaxis(array, -3, 0) if name == "samples" else array
        np.testing.assert_array_equal(written, expected, err_msg=name)


def test_ome_zarr_in_and_out_equals_tiff_in_and_out(tmp_path, models, capsys):
    series = _series()
    write_store(tmp_path / "in" / "s.ome.zarr", series)
    write_image(tmp_path / "tif" / "s.tif", series, pixel_size_um=0.21, axes="TCYX")
    assert main(["predict", str(tmp_path / "in" / "s.ome.zarr"), "--model", str(models["qpi"]),
                 "--out", str(tmp_path / "z"), *FAST]) == 0
    assert main(["predict", str(tmp_path / "tif" / "s.tif"), "--model", str(models["qpi"]),
                 "--out", str(tmp_path / "t"), *FAST]) == 0
    for name in ("mean", "variance", "gamma", "consistency"):
        stored = read_ome_zarr(tmp_path / "z" / f"s_{name}.ome.zarr")
        assert stored.axes == "TYX" and stored.pixel_size_um == pytest.approx(0.21)
        np.testing.assert_array_equal(np.asarray(stored.array), read_image(tmp_path / "t" / f"s_{name}.tif").array)
    assert json.loads((tmp_path / "z" / "s_cvdm.json").read_text())["outputs"]["mean"] == "s_mean.ome.zarr"


def test_an_sr_store_is_placed_on_the_finer_grid_with_a_pyramid(tmp_path, models, capsys):
    frames = np.random.default_rng(1).uniform(0.5, 1.5, (2, 80, 72)).astype(np.float32)
    axes = [AXES[0], AXES[2], AXES[3]]
    write_store(tmp_path / "in" / "w.ome.zarr", frames, axes=axes, pixel=0.1)
    assert main(["predict", str(tmp_path / "in" / "w.ome.zarr"), "--model", str(models["sr"]),
                 "--out", str(tmp_path / "o"), *FAST]) == 0
    group = zarr.open_group(tmp_path / "o" / "w_mean.ome.zarr", mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [group[d["path"]].shape for d in datasets] == [(2, 160, 144), (2, 80, 72)]
    level0, level1 = (d["coordinateTransformations"] for d in datasets)
    assert level0[0]["scale"][-2:] == pytest.approx([0.05, 0.05])
    assert level0[1]["translation"][-2:] == pytest.approx([-0.025, -0.025])  # fine pixel 0 centre
    assert level1[1]["translation"][-2:] == pytest.approx([0.0, 0.0])  # 2×2 fine = one camera pixel
    consistency = read_ome_zarr(tmp_path / "o" / "w_consistency.ome.zarr")
    assert consistency.array.shape == (2, 80, 72) and consistency.pixel_size_um == pytest.approx(0.1)


def _stop_after(monkeypatch, planes: int):
    """Make a run stop (as if killed) once ``planes`` planes are recorded as finished."""
    from napari_cvdm.io.progress import Progress

    original = Progress.add

    def add(self, plane, record):
        original(self, plane, record)
        if len(self.planes) >= planes:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "add", add)


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, models, capsys, monkeypatch, fmt):
    write_store(tmp_path / "in" / "s.ome.zarr", _series(4))
    argv = ["predict", str(tmp_path / "in" / "s.ome.zarr"), "--model", str(models["qpi"]), "--format", fmt, *FAST]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        assert main([*argv, "--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / f"s_mean{'.tif' if fmt == 'tiff' else '.ome.zarr'}").exists()
    capsys.readouterr()
    _run_failing(capsys, [*argv, "--out", str(tmp_path / "cut")], "--resume")
    _run_failing(capsys, [*argv, "--out", str(tmp_path / "cut"), "--resume", "--steps", "3"], "other settings")
    assert main([*argv, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "step 4/4" in err and "/8" not in err  # only the two planes left were computed (2 steps each)
    for name in ("mean", "variance", "gamma", "consistency"):
        suffix = ".tif" if fmt == "tiff" else ".ome.zarr"
        read = read_image if fmt == "tiff" else read_ome_zarr
        a, b = (np.asarray(read(tmp_path / d / f"s_{name}{suffix}").array) for d in ("whole", "cut"))
        np.testing.assert_array_equal(a, b, err_msg=name)
    _run_failing(capsys, [*argv, "--out", str(tmp_path / "cut"), "--resume"], "already exists", "--overwrite")


def test_bad_stores_get_one_line_before_any_computing(tmp_path, models, capsys):
    model = ["--model", str(models["qpi"]), *FAST]
    store = write_store(tmp_path / "a.ome.zarr", _series())
    next(p for p in (store / "0").rglob("c/*/*/*/*") if p.is_file()).write_bytes(b"garbage")
    _run_failing(capsys, ["predict", str(store), "--out", str(tmp_path / "o"), *model], "a.ome.zarr", "damaged")
    store = write_store(tmp_path / "b.ome.zarr", _series())
    next(p for p in (store / "0").rglob("c/*/*/*/*") if p.is_file()).unlink()
    _run_failing(capsys, ["predict", str(store), "--out", str(tmp_path / "o"), *model], "partly written")
    (store / "zarr.json").write_text("{not json")
    _run_failing(capsys, ["predict", str(store), "--out", str(tmp_path / "o"), *model], "b.ome.zarr")
    flat = write_store(tmp_path / "c.ome.zarr", _series()[:, 0], axes=[AXES[0], AXES[2], AXES[3]])
    _run_failing(capsys, ["predict", str(flat), "--out", str(tmp_path / "o"), *model], "defocus stack")
    odd = [*AXES[:2], {"name": "w", "type": "space", "unit": "micrometer"}, AXES[3]]
    odd_store = write_store(tmp_path / "d.ome.zarr", _series(), axes=odd)
    _run_failing(capsys, ["predict", str(odd_store), "--out", str(tmp_path / "o"), *model], "axes")
    plain = [AXES[0], AXES[1], {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    no_unit = write_store(tmp_path / "e.ome.zarr", _series(), axes=plain)
    _run_failing(capsys, ["predict", str(no_unit), "--out", str(tmp_path / "o"), *model], "no physical scale",
                 "--pixel-size")
    good = write_store(tmp_path / "f.ome.zarr", _series())
    _run_failing(capsys, ["predict", str(good), "--out", str(good / "results"), *model], "inside the input")
    assert not (tmp_path / "o").exists() and not (good / "results").exists()


def test_a_nan_in_the_last_plane_of_a_store_is_one_line_when_that_plane_is_read(tmp_path, models, capsys):
    series = _series(3)
    series[2, 0, 4, 5] = np.nan
    store = write_store(tmp_path / "s.ome.zarr", series)
    _run_failing(capsys, ["predict", str(store), "--model", str(models["qpi"]), "--out", str(tmp_path / "o"), *FAST],
                 "s.ome.zarr", "NaN values in plane 2", "replace them")
    assert (tmp_path / "o" / ".s_cvdm.progress.json").exists()  # planes 0 and 1 are kept for --resume


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_a_nan_in_the_first_plane_leaves_no_file_behind(tmp_path, models, capsys, fmt):
    series = _series(2)
    series[0, 1, 3, 3] = np.nan
    path = write_store(tmp_path / "s.ome.zarr", series) if fmt == "ome-zarr" else \
        write_image(tmp_path / "s.tif", series, pixel_size_um=0.21, axes="TCYX")
    _run_failing(capsys, ["predict", str(path), "--model", str(models["qpi"]), "--out", str(tmp_path / "o"), *FAST],
                 "NaN values", "replace them")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_full_disk_keeps_the_finished_planes_for_resume(tmp_path, models, capsys, monkeypatch):
    import errno

    from napari_cvdm.io.omezarr import ZarrSink

    store = write_store(tmp_path / "in" / "s.ome.zarr", _series())
    argv = ["predict", str(store), "--model", str(models["qpi"]), "--out", str(tmp_path / "o"), *FAST]
    original, calls = ZarrSink.put, []

    def put(self, *args):
        calls.append(args)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(ZarrSink, "put", put)
        _run_failing(capsys, argv, "No space left on device", "--resume")
    assert main([*argv, "--resume"]) == 0
    assert np.isfinite(np.asarray(read_ome_zarr(tmp_path / "o" / "s_mean.ome.zarr").array)).all()


def test_two_local_workers_give_the_single_process_result_even_when_one_is_killed(tmp_path, models, capsys,
                                                                                   monkeypatch):
    write_store(tmp_path / "in" / "s.ome.zarr", _series(4))
    argv = ["predict", str(tmp_path / "in" / "s.ome.zarr"), "--model", str(models["qpi"]), *FAST]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0

    killed = []
    import napari_cvdm.predict as job

    deliver = job.deliver_plane

    def deliver_and_kill_a_worker(sink, layout, p, arrays, record):  # after the first plane: kill -9 a worker
        deliver(sink, layout, p, arrays, record)
        if not killed:
            import os
            import signal

            from dask.distributed import default_client

            pids = default_client().run(os.getpid)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            killed.append(True)

    monkeypatch.setattr(job, "deliver_plane", deliver_and_kill_a_worker)
    assert main([*argv, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert killed and "plane 4/4 on" in capsys.readouterr().err
    for name in ("mean", "variance", "gamma", "consistency"):
        a, b = (np.asarray(read_ome_zarr(tmp_path / d / f"s_{name}.ome.zarr").array) for d in ("one", "two"))
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_run_left_without_workers_stops_in_one_line_and_resumes_to_the_same_result(tmp_path, models, capsys,
                                                                                      monkeypatch):
    import napari_cvdm.distributed as distributed
    import napari_cvdm.predict as job

    write_store(tmp_path / "in" / "s.ome.zarr", _series(4))
    argv = ["predict", str(tmp_path / "in" / "s.ome.zarr"), "--model", str(models["qpi"]), *FAST]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    gone, deliver = [], job.deliver_plane

    def deliver_then_stop_every_worker(sink, layout, p, arrays, record):  # after the first plane: no worker left
        deliver(sink, layout, p, arrays, record)
        if not gone:
            from dask.distributed import default_client

            default_client().cluster.scale(0)
            gone.append(True)

    monkeypatch.setattr(job, "deliver_plane", deliver_then_stop_every_worker)
    monkeypatch.setattr(distributed, "NO_WORKER_TIMEOUT_S", 1.0)
    two = ["--out", str(tmp_path / "two")]
    _run_failing(capsys, [*argv, *two, "--workers", "2"], "no dask worker left", "--resume")
    assert gone
    monkeypatch.setattr(job, "deliver_plane", deliver)
    assert main([*argv, *two, "--resume"]) == 0
    for name in ("mean", "variance", "gamma", "consistency"):
        a, b = (np.asarray(read_ome_zarr(tmp_path / d / f"s_{name}.ome.zarr").array) for d in ("one", "two"))
        np.testing.assert_array_equal(a, b, err_msg=name)
