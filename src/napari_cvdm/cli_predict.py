"""``cvdm predict`` behind its flags: the inputs (TIFF files, OME-Zarr stores), the outputs each will write,
resuming a stopped run, and one input through the job into a file sink.

Every check that can be made before computing is made for every input first: output names that
would clash or replace something, an output inside an input, a stopped run's partial outputs.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .io.omezarr import is_zarr
from .io.progress import progress_path
from .io.sinks import partial_path

FORMATS = ("tiff", "ome-zarr")
_SUFFIX = {"tiff": ".tif", "ome-zarr": ".ome.zarr"}


def stem(path: Path) -> str:
    """An input's name without its suffixes (``a.ome.zarr`` → ``a``, ``a.tif`` → ``a``)."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_format(path: Path, chosen: str | None) -> str:
    """The format an input's outputs are written in: ``chosen``, else the input's own."""
    return chosen or ("ome-zarr" if is_zarr(path) else "tiff")


def planned_outputs(files: list[Path], out_dir: Path, names: list[str], fmt: str | None = None,
                    overwrite: bool = False, resume: bool = False) -> dict[Path, dict[str, Path]]:
    """Every output ``predict`` will write, per input: ``names`` and the sidecar. InputError before any
    computing if one would replace an input or lie inside one, two inputs would write the same names,
    an output exists (without ``overwrite``), or a stopped run's state is there (without ``resume``)."""
    _check_places(files, out_dir, fmt)
    planned = {path: {**{name: out_dir / f"{stem(path)}_{name}{_SUFFIX[output_format(path, fmt)]}"
                         for name in names}, "sidecar": out_dir / f"{stem(path)}_cvdm.json"} for path in files}
    if overwrite:
        return planned
    for path, outputs in planned.items():
        stopped = progress_path(outputs["sidecar"]).exists()
        if stopped and not resume:
            raise InputError(f"a stopped run of {path.name} left partial outputs in {out_dir}; use --resume to "
                             "continue it, or --overwrite to start again.")
        existing = [target for target in outputs.values() if target.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise InputError(f"{existing[0]} already exists{more}; use --overwrite to replace, or another --out.")
    return planned


def _check_places(files: list[Path], out_dir: Path, fmt: str | None) -> None:
    """InputError when two inputs share a name, or --out is a folder of inputs or lies inside an input."""
    by_stem: dict[str, Path] = {}
    for path in files:
        other = by_stem.setdefault(stem(path).lower(), path)
        if other != path:
            names = f"{stem(path)}_*{_SUFFIX[output_format(path, fmt)]}"
            raise InputError(f"{other} and {path} would both write {names}; predict them into separate --out folders.")
    out = out_dir.resolve()
    inputs = {path.resolve() for path in files}
    if out in {path.parent for path in inputs}:
        raise InputError(f"--out {out_dir} is a folder of inputs; choose another output folder, "
                         "so that results never mix with (or replace) the images they came from.")
    inside = next((path for path in inputs if out == path or path in out.parents), None)
    if inside is not None:
        raise InputError(f"--out {out_dir} lies inside the input {inside.name}; choose a folder outside it.")


def has_partial(outputs: dict[str, Path]) -> bool:
    """Whether a stopped run left state for these outputs."""
    return progress_path(outputs["sidecar"]).exists() or any(
        partial_path(p).exists() for n, p in outputs.items() if n != "sidecar")


def read_input(path: Path, pixel_size_um: float | None = None):
    """``ImageData`` of one input, read a plane at a time (a TIFF whose pages are not planes: whole).

    InputError for a damaged store, more than 5 axes, or an OME-Zarr without physical scale and no
    ``pixel_size_um`` given."""
    from .io import read_image
    from .io.omezarr import check_readable, read_ome_zarr

    if is_zarr(path):
        image = read_ome_zarr(path)
        check_readable(image)
        if image.pixel_size_um is None and pixel_size_um is None:
            raise InputError(f"{path.name} has no physical scale (its x axis has no unit); give --pixel-size in µm.")
    else:
        image = read_image(path, lazy=True)
    if image.array.ndim > 5:
        raise InputError(f"the image has {image.array.ndim} dimensions {tuple(image.array.shape)}; "
                         "at most 5 (T, Z, C, Y, X) can be reconstructed and written.")
    return image


def output_axes(input_axes: str | None, lead_ndim: int) -> str | None:
    """Axes of a (..., H, W) output: the input's named leading axes without C, else None (default)."""
    if input_axes is None:
        return None
    lead = [a for a in input_axes[:-2] if a != "C"]
    return "".join(lead) + "YX" if len(lead) == lead_ndim else None


def fingerprint(model_digest: str, settings, image, acquisition, fmt: str, names: list[str]) -> dict:
    """What a resumed run must share with the stopped one (:class:`~napari_cvdm.io.progress.Progress`)."""
    from dataclasses import asdict

    from .io.progress import input_fingerprint

    return {"model": model_digest, "settings": asdict(settings), "input": input_fingerprint(image.path, image.array),
            "acquisition": [acquisition.pixel_size_um, acquisition.wavelength_um, acquisition.dz_um, acquisition.axes,
                            acquisition.na],
            "format": fmt, "outputs": names}


def make_sink(fmt: str, outputs: dict[str, Path], image, info, pixel_size_um: float | None, progress):
    """The file sink of one input: a TiffSink or a ZarrSink whose axes and placement follow the input's."""
    from .io.omezarr import ZarrSink
    from .io.sinks import TiffSink

    paths = {name: p for name, p in outputs.items() if name != "sidecar"}
    lead_ndim = image.array.ndim - 2 - (int(info.config.y_channels) > 1)
    if fmt == "tiff":
        return TiffSink(paths, outputs["sidecar"], output_axes(image.axes, lead_ndim), progress)
    axes, scale, shift, origin = _lead_ngff(image, info, lead_ndim)
    return ZarrSink(paths, outputs["sidecar"], axes, scale, shift, origin, pixel_size_um, progress)


def _lead_ngff(image, info, lead_ndim: int):
    """NGFF axes, scale and translation of the outputs' leading axes, and the input's (y, x) origin in µm."""
    types = {"t": "time", "c": "channel", "z": "space"}
    channel_at = image.array.ndim - 3 if int(info.config.y_channels) > 1 else None
    if image.ngff is not None:
        keep = [i for i in range(image.array.ndim - 2) if i != channel_at]
        axes = [dict(image.ngff["axes"][i]) for i in keep]
        unit = image.ngff["unit_um"] or 1.0
        origin = tuple(unit * t for t in image.ngff["translation"][-2:])
        return axes, [image.ngff["scale"][i] for i in keep], [image.ngff["translation"][i] for i in keep], origin
    letters = output_axes(image.axes, lead_ndim)
    names = list(letters[:-2].lower()) if letters else list("tz"[-lead_ndim:] if lead_ndim else "")
    if len(names) != lead_ndim or lead_ndim > 2:
        raise InputError(f"the outputs' {lead_ndim} leading axes cannot be named for OME-Zarr; use --format tiff.")
    return [{"name": n, "type": types[n]} for n in names], [1.0] * lead_ndim, [0.0] * lead_ndim, (0.0, 0.0)
