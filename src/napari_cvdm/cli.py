"""Command-line interface: ``cvdm train | predict | evaluate | simulate | info``.

Every error caused by user input is printed as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import CVDMError


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, else printed every ``interval_s``."""

    def __init__(self, interval_s: float = 10.0):
        self.tty = sys.stderr.isatty()
        self.interval_s = 0.2 if self.tty else interval_s
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        self.last = now
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        else:
            _say(text)

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- train


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--patch-size`` for ``patch_size``), default: not given."""
    from .train import TrainConfig

    defaults = TrainConfig()
    types = {"int": (int, "N"), "float": (float, "X"), "str": (str, "TEXT"), "str | None": (str, "PATH"),
             "float | None": (float, "X")}
    for f in dataclasses.fields(TrainConfig):
        kind, metavar = types[str(f.type)]
        parser.add_argument(_config_flag(f.name), dest=f"config_{f.name}", type=kind, default=None,
                            metavar=metavar, help=f"(default: {getattr(defaults, f.name)!r})")


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    data = {}
    if args.config:
        from .train import read_config_file

        data = read_config_file(args.config)
        data = dict(data.get("train", data)) if set(data) == {"train"} else data
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f"config_{f.name}")
        if value is not None:
            data[f.name] = value
    return TrainConfig.from_dict(data)


def _train(args: argparse.Namespace) -> None:
    import logging
    import os

    from .train import train

    config = _train_config(args)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"cvdm train: %(levelname)s: %(message)s", stream=sys.stderr)
    stop_requested = []

    def request_stop(signum, frame):  # first Ctrl-C / SIGTERM: finish the step, save, export
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested.append(signum)
        _say(f"\ncvdm train: {signal.Signals(signum).name} received; stopping after this step "
             "(again to abort without saving)")

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    line = _ProgressLine()

    def progress(p):
        if rank != 0:
            return
        text = (f"step {p.step}/{p.total_steps}  loss {p.losses['loss']:.4f}  lr {p.losses['lr']:.2e}  "
                f"elapsed {_duration(p.elapsed_s)}  eta {_duration(p.eta_s)}")
        if p.validation:
            text += "  val " + " ".join(f"{k} {v:.4g}" for k, v in p.validation.items())
        line.show(text, force=p.validation is not None or p.step == p.total_steps)

    result = train(config, progress=progress, should_stop=lambda: bool(stop_requested), resume=args.resume)
    line.done()
    if rank == 0:
        state = "stopped early" if result.stopped else "finished"
        _say(f"cvdm train: {state} at step {result.steps_done}; model written to {result.model_path}")
        if result.validation:
            _say("cvdm train: validation " + ", ".join(f"{k} {v:.4g}" for k, v in result.validation.items()))
        print(result.model_path)


# ----------------------------------------------------------------------------- predict


def _settings(args: argparse.Namespace):
    from .reconstruct import ReconstructionSettings

    return ReconstructionSettings(
        n_samples=args.n_samples, sampler=args.sampler, steps=args.steps,
        tile_size=None if args.tile_size == 0 else args.tile_size, tile_overlap=args.tile_overlap,
        device=args.device, seed=args.seed, keep_samples=getattr(args, "keep_samples", False),
        precision=args.precision, eta=args.eta, max_batch=args.max_batch,
        grid=args.grid, channels_last=args.channels_last, compile=args.compile,
    )


def _output_axes(input_axes: str | None, lead_ndim: int) -> str | None:
    """Axes of a (..., H, W) output: the input's named leading axes without C, else None (default)."""
    if input_axes is None:
        return None
    lead = [a for a in input_axes[:-2] if a != "C"]
    return "".join(lead) + "YX" if len(lead) == lead_ndim else None


def _predict(args: argparse.Namespace) -> None:
    from . import __version__
    import numpy as np

    from .checkpoint import load_model
    from .io import list_images, read_image, write_image, write_sidecar
    from .reconstruct import check_pixel_size, reconstruct, resolve_device, validate_input

    settings = _settings(args)
    settings.check()
    files = list_images(args.inputs)
    model, info = load_model(args.model, resolve_device(settings.device))
    out_dir = Path(args.out)
    line = _ProgressLine()
    for index, path in enumerate(files, 1):
        image = read_image(path)
        try:
            validate_input(info, image.array, image.axes)
        except CVDMError as error:
            raise type(error)(f"{path.name}: {error}") from None
        pixel_size = args.pixel_size if args.pixel_size is not None else image.pixel_size_um
        mismatch = check_pixel_size(info, pixel_size)
        if mismatch:
            _say(f"cvdm predict: warning: {path.name}: {mismatch}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the pixel-size warning was printed above
            result = reconstruct(
                model, info, image.array, settings, input_pixel_size_um=pixel_size,
                progress=lambda done, total: line.show(f"{path.name} ({index}/{len(files)}): "
                                                       f"step {done}/{total}", force=done == total),
            )
        line.done()
        lead_ndim = result.mean.ndim - 2
        axes = _output_axes(image.axes, lead_ndim)
        written = {}
        for name, array in (("mean", result.mean), ("variance", result.variance), ("gamma", result.gamma_map)):
            written[name] = write_image(out_dir / f"{path.stem}_{name}.tif", array, result.pixel_size_um, axes)
        if result.samples is not None:
            # samples first, shown by ImageJ as frames (T) unless the input is a time series itself
            samples = np.moveaxis(result.samples, -3, 0)
            sample_axes = "T" + axes if axes is not None and "T" not in axes else None
            written["samples"] = write_image(out_dir / f"{path.stem}_samples.tif", samples, result.pixel_size_um,
                                             sample_axes)
        sidecar = write_sidecar(out_dir / f"{path.stem}_cvdm.json", {
            "input": str(path), "input_shape": list(image.array.shape), "input_axes": image.axes,
            "input_pixel_size_um": pixel_size, "output_pixel_size_um": result.pixel_size_um,
            "upsampling_factor": result.upsampling_factor, "unit": result.unit,
            "outputs": {name: p.name for name, p in written.items()},
            "model": {"path": str(Path(args.model).resolve()), **info.to_dict()},
            "settings": result.metadata, "napari_cvdm_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        for written_path in (*written.values(), sidecar):
            print(written_path)


# ----------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import EvaluationOptions, evaluate, write_tables

    options = EvaluationOptions(
        models=[Path(m) for m in args.model], baselines=not args.no_baselines, settings=_settings(args),
        task=args.task, input_dir=args.input_dir, target_dir=args.target_dir, simulate=args.simulate, images=args.images,
        source_images=args.source_images, test_set=args.test_set,
        size=args.size, seed=args.seed, na=args.na, wavelength_um=args.wavelength, offset=args.offset,
        dz_um=args.dz, qpi_wavelength_um=args.qpi_wavelength, pixel_size_um=args.pixel_size,
    )
    line = _ProgressLine()
    table = evaluate(options, progress=lambda text: line.show(text, force=True))
    line.done()
    markdown, csv_path, per_image = write_tables(table, Path(args.out))
    print(markdown.read_text(), end="")
    for path in (markdown, csv_path, per_image):
        print(path)


# ----------------------------------------------------------------------------- simulate and info


def _simulate(args: argparse.Namespace) -> None:
    from .data import SR_TRAIN, SR_UNSEEN_TEST, write_simulated_folders

    if args.images < 1:
        raise_input(f"--images must be at least 1 (got {args.images}).")
    sr_config = SR_UNSEEN_TEST if args.split == "test" else SR_TRAIN  # SR's test split is the unseen settings
    try:
        inputs, targets = write_simulated_folders(args.out, args.task, args.images, size=args.size, seed=args.seed,
                                                  sr_config=sr_config, split=args.split, source_dir=args.source_images)
    except ValueError as error:
        raise_input(str(error))
    print(inputs)
    print(targets)


def _info(args: argparse.Namespace) -> None:
    import json

    from .checkpoint import read_model_info

    print(json.dumps(read_model_info(args.model).to_dict(), indent=2))


def raise_input(message: str) -> None:
    from .errors import InputError

    raise InputError(message)


# ----------------------------------------------------------------------------- parser


def _add_reconstruction_flags(parser: argparse.ArgumentParser) -> None:
    from .model import GRIDS, SAMPLERS

    group = parser.add_argument_group("sampling")
    group.add_argument("--n-samples", type=int, default=8, help="samples per image (default: 8)")
    group.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the model's")
    group.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    group.add_argument("--grid", choices=GRIDS, default=None, help="sampler time grid (default: the model's)")
    group.add_argument("--eta", type=float, default=None, help="DDIM η for ddim/ancestral (default: 0 / 1)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="auto", help="auto, cuda, cuda:1, mps or cpu (default: auto)")
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto = bf16 on CUDA, else fp32")
    group.add_argument("--tile-size", type=int, default=256,
                       help="tile side in output pixels; 0 = whole image (default: 256)")
    group.add_argument("--tile-overlap", type=int, default=32, help="output pixels (default: 32)")
    group.add_argument("--max-batch", type=int, default=None, help="samples per network call (default: all)")
    group.add_argument("--channels-last", action="store_true", help="run the network on NHWC tensors (GPUs)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the network (first call slow; pays off on large images)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvdm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a model on simulated data or paired TIFF folders",
        description="Train a CVDM. Settings come from --config (TOML, or YAML with PyYAML) and are "
                    "overridden by flags. Runs on several GPUs under torchrun --nproc_per_node=N.")
    train.add_argument("--config", help="TOML/YAML file of TrainConfig settings")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in OUTPUT's .run folder if it has a checkpoint")
    _add_config_flags(train.add_argument_group("settings (override the config file)"))
    train.set_defaults(run=_train)

    predict = commands.add_parser(
        "predict", help="reconstruct TIFF images: mean, variance and γ map",
        description="Reconstruct TIFF files (or every TIFF in given folders). Z/T stacks are processed "
                    "plane by plane; QPI inputs are (…, 2, H, W) defocus stacks.")
    predict.add_argument("inputs", nargs="+", help="TIFF files or folders")
    predict.add_argument("--model", required=True, help="model file (.safetensors)")
    predict.add_argument("--out", default="out/predict", help="output folder (default: out/predict)")
    predict.add_argument("--pixel-size", type=float, default=None,
                         help="input pixel size in µm (default: the TIFF's, else the model's)")
    predict.add_argument("--keep-samples", action="store_true", help="also write the individual samples")
    _add_reconstruction_flags(predict)
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="metrics table of models and classical baselines on a dataset",
        description="Score models (and the classical baselines) on paired folders or simulated test data; "
                    "writes metrics.md, metrics.csv and metrics_per_image.csv.")
    evaluate.add_argument("--model", action="append", default=[], help="model file (repeat for several)")
    source = evaluate.add_argument_group("data (folders, or simulated test pairs)")
    source.add_argument("--task", choices=("sr", "qpi"), help="the data's task (default: the models')")
    source.add_argument("--input-dir")
    source.add_argument("--target-dir")
    source.add_argument("--simulate", choices=("sr", "qpi"), help="simulated test pairs of this task")
    source.add_argument("--images", type=int, default=8, help="simulated pairs (default: 8)")
    source.add_argument("--size", type=int, default=128, help="simulated image side (default: 128)")
    source.add_argument("--source-images", metavar="DIR",
                        help="QPI: phase objects from the test split (by file) of this folder of photos")
    source.add_argument("--test-set", choices=("unseen", "seen"), default="unseen",
                        help="simulated data outside the training distribution (default) or from it")
    optics = evaluate.add_argument_group("optics for the classical baselines")
    optics.add_argument("--na", type=float, default=1.4, help="SR numerical aperture (default: 1.4)")
    optics.add_argument("--wavelength", type=float, default=0.575, help="SR emission µm (default: 0.575)")
    optics.add_argument("--offset", type=float, default=100.0, help="SR camera offset ADU (default: 100)")
    optics.add_argument("--dz", type=float, default=1.0, help="QPI defocus µm (default: 1)")
    optics.add_argument("--qpi-wavelength", type=float, default=0.521, help="QPI µm (default: 0.521)")
    optics.add_argument("--pixel-size", type=float, default=None,
                        help="raw input pixel µm (default: the data's, else the model's)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip the classical baselines")
    evaluate.add_argument("--out", default="out/evaluate", help="output folder (default: out/evaluate)")
    _add_reconstruction_flags(evaluate)
    evaluate.set_defaults(run=_evaluate)

    simulate = commands.add_parser("simulate", help="write a simulated dataset as paired TIFF folders")
    simulate.add_argument("--task", choices=("sr", "qpi"), required=True)
    simulate.add_argument("--out", required=True, help="folder; gets inputs/ and targets/")
    simulate.add_argument("--images", type=int, default=16, help="pairs (default: 16)")
    simulate.add_argument("--size", type=int, default=256, help="target image side in pixels (default: 256)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--split", choices=("train", "validation", "test"), default="train",
                          help="stream to write (default: train); SR's test split uses the unseen settings")
    simulate.add_argument("--source-images", metavar="DIR",
                          help="QPI: phase objects from this folder's photos of --split (split by file)")
    simulate.set_defaults(run=_simulate)

    info = commands.add_parser("info", help="print a model file's metadata (JSON)")
    info.add_argument("model")
    info.set_defaults(run=_info)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CVDMError as error:
        message = " ".join(str(error).split())  # always one line
        print(f"cvdm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cvdm {args.command}: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that quit early (`cvdm info m | head`)
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush stays quiet
    return 0


if __name__ == "__main__":
    sys.exit(main())
