"""Command-line interface: ``cvdm train | predict | calibrate | evaluate | simulate | info``.

Exit codes: 0 success; 2 a user error (a bad flag, file or setting), printed as one
line before any computing where it can be known then; 3 ``cvdm train`` stopped by
SIGINT/SIGTERM after saving its checkpoint and model (resume with ``--resume``);
130 aborted by a second signal without saving.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import signal
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path

from .errors import CVDMError, InputError
from .physics.optics import QPI_DZ_UM, QPI_WAVELENGTH_UM, SR_EMISSION_UM, SR_NA

EXIT_USER_ERROR = 2
#: ``cvdm train`` stopped by a signal, checkpoint and model saved: a scheduler requeues with --resume.
EXIT_STOPPED = 3
EXIT_ABORTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``cvdm predict: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())}\n")


def _bounded(kind: type, low: float | None = None, high: float | None = None, above: bool = False):
    """An argparse type: a finite ``kind`` ≥ ``low`` (> ``low`` if ``above``) and ≤ ``high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        too_low = low is not None and (value < low or (above and value == low))
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            words = [f"{'>' if above else '≥'} {low:g}" if low is not None else "",
                     f"≤ {high:g}" if high is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(w for w in words if w) or 'finite'}, "
                                             f"got {text}")
        return value

    return parse


def _device(text: str) -> str:
    from .config import DEVICE_PATTERN

    if not re.match(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, mps, cuda or cuda:N, got {text!r}")
    return text.strip()


POSITIVE = _bounded(float, 0, above=True)
# Bounds of the numeric flags: far beyond real use, small enough never to exhaust memory on their own.
MAX_IMAGES = 100_000
MIN_SIMULATED_SIZE, MAX_SIMULATED_SIZE = 16, 4096
SEED = _bounded(int, 0, 2**63 - 1)


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


class _SampleRate:
    """``progress(done, total)`` of :func:`~napari_cvdm.engine.reconstruct` as steps, samples done
    (the fraction of the work times N, per plane) and time per sample on a :class:`_ProgressLine`."""

    def __init__(self, line: _ProgressLine, label: str, n_samples: int):
        self.line, self.label, self.n_samples, self.start = line, label, n_samples, time.monotonic()

    def show(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        samples = self.n_samples * done / total
        left = elapsed * (total - done) / done if done else None  # a heartbeat before the first step
        self.line.show(f"{self.label}: step {done}/{total}, {samples:.1f}/{self.n_samples} samples, "
                       f"{elapsed / max(samples, 1e-9):.1f} s per sample, {_duration(left)} left",
                       force=done == total)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- train


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number_type(hint) -> type:
    """``int`` or ``float`` when a setting's type hint (optional, annotated) is that number, else ``str``."""
    for arg in typing.get_args(hint) or (hint,):
        plain = typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg
        if plain in (int, float):
            return plain
    return str


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--patch-size`` for ``patch_size``), default: not given."""
    from .config import TrainConfig

    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):  # a flag that switches the default: --overwrite, --no-calibrate
            flag = _config_flag(f.name) if not default else "--no-" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f"config_{f.name}", action="store_const", const=not default,
                                default=None, help=f"(default: {'on' if default else 'off'})")
            continue
        # ranges and choices are checked by TrainConfig, which names the setting
        kind = _number_type(hints[f.name])
        metavar = {int: "N", float: "X"}.get(kind, "TEXT")
        parser.add_argument(_config_flag(f.name), dest=f"config_{f.name}", type=kind, default=None,
                            metavar=metavar, help=f"(default: {default!r})")


def _train_config(args: argparse.Namespace):
    from .config import TrainConfig

    data = {}
    if args.config:
        from .config import read_config_file

        data = read_config_file(args.config)
        if set(data) == {"train"}:
            if not isinstance(data["train"], dict):
                raise InputError(f"The [train] section of {Path(args.config).name} must hold settings "
                                 f"(got {data['train']!r}).")
            data = dict(data["train"])
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f"config_{f.name}")
        if value is not None:
            data[f.name] = value
    return TrainConfig.from_dict(data)


def _train(args: argparse.Namespace) -> int:
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
    if rank == 0 and not result.exported:
        _say("cvdm train: stopped before the first training step; nothing was saved or exported")
    elif rank == 0:
        state = "stopped early" if result.stopped else "finished"
        _say(f"cvdm train: {state} at step {result.steps_done}; model written to {result.model_path}")
        if result.validation:
            _say("cvdm train: validation " + ", ".join(f"{k} {v:.4g}" for k, v in result.validation.items()))
        print(result.model_path)
    return EXIT_STOPPED if result.stopped and stop_requested else 0


# ----------------------------------------------------------------------------- predict


def _settings(args: argparse.Namespace):
    """The reconstruction settings of the flags :func:`_add_reconstruction_flags` made (0 = None where
    None means something, e.g. ``--tile-size 0`` = the whole image)."""
    from .engine.settings import BOUNDS, DEFAULTS, ReconstructionSettings

    values = {name: getattr(args, name) for name in BOUNDS if hasattr(args, name)}
    for name, value in values.items():
        if value == 0 and not isinstance(value, bool) and BOUNDS[name].none is not None \
                and getattr(DEFAULTS, name) is not None:
            values[name] = None
    return ReconstructionSettings(**values)


def _rank_share(files: list[Path], device: str) -> tuple[list[Path], str]:
    """This ``torchrun`` rank's inputs (files RANK, RANK + WORLD_SIZE, …) and device (``cuda:LOCAL_RANK``
    for ``auto``/``cuda`` when CUDA is present); all files and ``device`` unchanged without torchrun.
    No process group: each rank writes the names one process would, so the union is the same."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return files, device
    stems = [path.stem.lower() for path in files]
    clashes = [path for i, path in enumerate(files) if stems[i] in stems[:i]]
    if clashes:  # on different ranks, no rank would see the clash: check the whole list here
        raise InputError(f"two inputs would both write {clashes[0].stem}_*.tif; "
                         "predict them into separate --out folders.")
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return files[rank::world], device


def _predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, read_model_info
    from .cli_predict import planned_outputs
    from .engine.settings import resolve_device
    from .io import check_writable_folder, list_images
    from .io.progress import file_digest
    from .predict import output_names

    settings = _settings(args)
    settings.check()
    files, settings.device = _rank_share(list_images(args.inputs, zarr=True), settings.device)
    out_dir = check_writable_folder(args.out)
    planned = planned_outputs(files, out_dir, output_names(read_model_info(args.model), settings), args.format,
                              args.overwrite, args.resume)
    client = None
    if args.workers or args.scheduler:
        from .distributed import connect

        client, model, info = connect(args.workers, args.scheduler), None, read_model_info(args.model)
    else:
        model, info = load_model(args.model, resolve_device(settings.device))
    try:
        failed = _predict_files(args, (model, client), info, settings, files, planned, file_digest(args.model))
    finally:
        if client is not None:
            cluster = client.cluster if args.workers else None
            client.close()
            if cluster is not None:
                cluster.close()
    if failed:
        raise InputError(f"{len(failed)} of {len(files)} files failed ({', '.join(failed)}); "
                         f"the other {len(files) - len(failed)} were written to {out_dir}.")
    return 0


def _predict_files(args, model, info, settings, files: list[Path], planned: dict, digest: str) -> list[str]:
    """Predict every file; the names of those that failed (one file: its error is raised)."""
    failed = []
    for index, path in enumerate(files, 1):
        try:
            _predict_one(args, model, info, settings, path, planned[path], f"{index}/{len(files)}", digest)
        except CVDMError as error:
            message = str(error) if str(error).startswith(path.name) else f"{path.name}: {error}"
            if len(files) == 1:
                raise type(error)(message) from None
            _say(f"cvdm predict: skipped {' '.join(message.split())}")
            failed.append(path.name)
    return failed


def _predict_one(args, model, info, settings, path: Path, outputs: dict[str, Path], counter: str,
                 model_digest: str) -> None:
    """Reconstruct one input through :func:`napari_cvdm.predict.predict` (``model``: ``(model, None)``) or
    across dask workers (``(None, client)``) into its planned outputs, plane by plane; a write that fails
    (a full disk) keeps the finished planes for ``--resume``."""
    from .cli_predict import fingerprint, make_sink, output_format, read_input
    from .io.progress import Progress, progress_path
    from .predict import Acquisition, Hooks, predict

    image = read_input(path, args.pixel_size)
    pixel_size = args.pixel_size if args.pixel_size is not None else image.pixel_size_um
    acquisition = Acquisition(str(path), pixel_size, args.wavelength_um, args.dz_um, image.axes, args.na)
    fmt, names = output_format(path, args.format), [n for n in outputs if n != "sidecar"]
    progress = Progress(progress_path(outputs["sidecar"]), fingerprint(model_digest, settings, image, acquisition,
                                                                       fmt, names), resume=args.resume)
    sink = make_sink(fmt, outputs, image, info, pixel_size, progress)
    line = _ProgressLine()
    hooks = Hooks(progress=_SampleRate(line, f"{path.name} ({counter})", settings.n_samples).show,
                  on_note=lambda note: _say(f"cvdm predict: warning: {path.name}: {note}"))
    model, client = model
    try:
        if client is not None:
            from .distributed import predict_distributed

            hooks.progress = lambda done, total: line.show(f"{path.name} ({counter}): plane {done}/{total} on "
                                                           f"{len(client.scheduler_info()['workers'])} workers",
                                                           force=done == total)
            prediction = predict_distributed(client, args.model, info, image, acquisition, settings, hooks, sink)
        else:
            prediction = predict(model, info, image.array, acquisition, settings, hooks, sink, model_path=args.model)
    except BaseException as error:
        sink.discard_if_empty()
        if isinstance(error, OSError):
            raise InputError(f"writing to {outputs['sidecar'].parent} failed ({error.strerror or error}); the "
                             "planes finished so far are kept: free some space and run again with --resume.") from None
        raise
    line.done()
    if "consistency" in outputs and "consistency" not in sink.written:
        _say(f"cvdm predict: note: {outputs['consistency'].name}: no consistency map "
             f"({prediction.consistency.summary['not_computed']})")
    for written_path in sink.written.values():
        print(written_path)


# ----------------------------------------------------------------------------- calibrate


def _calibration_output(args: argparse.Namespace) -> Path:
    """Where ``calibrate`` writes the model; InputError (before any computing) if it would replace a file unasked."""
    from .checkpoint import MODEL_SUFFIX
    from .io import check_writable_folder

    model = Path(args.model)
    if args.in_place:
        if args.output is not None:
            raise InputError("Give either --output NEW.safetensors or --in-place, not both.")
        output = model
    elif args.output is None:
        raise InputError(f"Say where the calibrated model goes: --output NEW{MODEL_SUFFIX}, "
                         f"or --in-place to update {model.name}.")
    else:
        output = Path(args.output)
        if not output.name.endswith(MODEL_SUFFIX):
            raise InputError(f"The output model file must end in {MODEL_SUFFIX} (got {output}).")
        if output.exists() and output.resolve() == model.resolve():
            raise InputError(f"--output {output} is the model itself; use --in-place to update it.")
        if output.exists() and not args.overwrite:
            raise InputError(f"{output} already exists; use --overwrite to replace it, or another --output.")
    check_writable_folder(output.parent)
    return output


def _calibrate(args: argparse.Namespace) -> int:
    from .residual import FIT_IMAGES, tie_of
    from .uncertainty.calibrate import calibrate_model, refit_base, with_calibration
    from .checkpoint import load_model, read_model_info, save_model
    from .data import load_pair_folders
    from .engine import resolve_device
    from .data.training import folder_pixel_size

    settings = _settings(args)
    settings.check()
    if settings.n_samples < 2:
        raise InputError(f"Calibration needs a variance: --n-samples must be at least 2 (got {settings.n_samples}).")
    output = _calibration_output(args)
    info = read_model_info(args.model)
    if info.task not in ("sr", "qpi"):
        raise InputError(f"{Path(args.model).name} is a {info.task} model; cvdm calibrate reads sr or qpi pairs.")
    if args.refit_base and tie_of(info) is None:
        raise InputError(f"{Path(args.model).name} has no TIE base to refit: --refit-base is for residual QPI models.")
    pairs = load_pair_folders(args.input_dir, args.target_dir, info.task)[: args.max_images]  # DataError: exit 2
    pixel = args.pixel_size or folder_pixel_size(Path(args.input_dir), Path(args.target_dir),
                                                 int(info.upsampling_factor))
    model, info = load_model(args.model, resolve_device(settings.device))
    source = f"{len(pairs)} pair(s) of {Path(args.input_dir).resolve()}"
    if args.refit_base:
        trained_base = info.base
        _say(f"cvdm calibrate: refitting the TIE base's regulariser on {min(len(pairs), FIT_IMAGES)} pair(s)…")
        info, words = refit_base(info, pairs, pixel)
        _say(f"cvdm calibrate: {words}")
        source += "; its TIE base refitted on them first" if trained_base != info.base else ""
    line = _ProgressLine()
    calibration = calibrate_model(
        model, info, pairs, settings, source=source,
        progress=lambda done, total: line.show(f"calibrating: image {done}/{total}", force=done == total),
        input_pixel_size_um=pixel, bins=args.bins,
    )
    line.done()
    save_model(output, model, with_calibration(info, calibration))
    _say(f"cvdm calibrate: {calibration.describe()}")
    print(output)
    return 0


# ----------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import EvaluationOptions, evaluate, write_tables
    from .io import check_writable_folder

    check_writable_folder(args.out)

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
    from .io import check_writable_folder

    out = check_writable_folder(args.out)
    for sub in ("inputs", "targets"):
        if (out / sub).is_dir() and any((out / sub).iterdir()):
            raise_input(f"--out {out}: {out / sub} already holds files; choose an empty or new folder.")
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

    from .residual import formulation_words
    from .uncertainty.apply import calibration_line
    from .checkpoint import read_model_info

    info = read_model_info(args.model)
    print(json.dumps(info.to_dict(), indent=2))
    _say(f"cvdm info: formulation: {formulation_words(info)}")
    _say(f"cvdm info: {calibration_line(info)}")


def raise_input(message: str) -> None:
    raise InputError(message)


# ----------------------------------------------------------------------------- parser


def _add_reconstruction_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per reconstruction setting (``--n-samples`` for ``n_samples``), its range, choices and
    default from :data:`napari_cvdm.engine.settings.BOUNDS`; read back by :func:`_settings`."""
    from .engine.settings import BOUNDS, DEFAULTS

    group = parser.add_argument_group("sampling")
    for name, bound in BOUNDS.items():
        if name in exclude:
            continue
        default = getattr(DEFAULTS, name)
        flag, words = "--" + name.replace("_", "-"), bound.help
        if isinstance(default, bool):
            flag = bound.flag or (flag if not default else "--no-" + name.replace("_", "-"))
            # the help describes the setting on; a flag that switches it off says so
            group.add_argument(flag, dest=name, action="store_const", const=not default, default=default,
                               help=f"switch off (default: on): {words}" if default else words)
            continue
        if bound.none is not None:
            words += f" (default: {bound.none})" if default is None else f"; 0 = {bound.none} (default: {default})"
        elif not isinstance(default, bool):
            words += f" (default: {default})"
        kind = type(default) if default is not None else (float if bound.above or isinstance(bound.high, float)
                                                         else int if bound.low is not None else str)
        options = {"choices": bound.choices} if bound.choices else {}
        if name == "device":
            options = {"type": _device}
        elif kind in (int, float):
            low = 0 if (default is not None and bound.none is not None) else bound.low
            options = {"type": _bounded(kind, low, bound.high, above=bound.above and low == bound.low),
                       "metavar": "N" if kind is int else "X"}
        group.add_argument(flag, dest=name, default=default, help=words.replace("%", "%%"), **options)


def build_parser() -> argparse.ArgumentParser:
    """The ``cvdm`` parser: one sub-command per task, each with its ``run`` function as default."""
    parser = _Parser(prog="cvdm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (_add_train_command, _add_predict_command, _add_calibrate_command, _add_evaluate_command,
                        _add_simulate_command, _add_info_command):
        add_command(commands)
    return parser


def _add_train_command(commands) -> None:
    train = commands.add_parser(
        "train", help="train a model on simulated data or paired TIFF folders",
        description="Train a CVDM. Settings come from --config (TOML, or YAML with PyYAML) and are "
                    "overridden by flags. Runs on several GPUs under torchrun --nproc_per_node=N.")
    train.add_argument("--config", help="TOML/YAML file of TrainConfig settings")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in OUTPUT's .run folder if it has a checkpoint")
    _add_config_flags(train.add_argument_group("settings (override the config file)"))
    train.set_defaults(run=_train)


def _add_predict_command(commands) -> None:
    predict = commands.add_parser(
        "predict", help="reconstruct TIFF or OME-Zarr images: mean, variance and γ map",
        description="Reconstruct TIFF files and OME-Zarr stores (or every one in given folders). Z/T stacks "
                    "are processed and written plane by plane; QPI inputs are (…, 2, H, W) defocus stacks.")
    predict.add_argument("inputs", nargs="+", help="TIFF files, OME-Zarr stores (*.zarr) or folders")
    predict.add_argument("--model", required=True, help="model file (.safetensors)")
    predict.add_argument("--out", default="out/predict", help="output folder (default: out/predict)")
    predict.add_argument("--pixel-size", type=POSITIVE, default=None,
                         help="input pixel size in µm (default: the TIFF's, else the model's)")
    predict.add_argument("--wavelength-um", type=POSITIVE, default=None,
                         help="QPI: illumination wavelength in µm for a model's TIE base; SR: emission wavelength in "
                              "µm (default: the model's, else the training simulator's)")
    predict.add_argument("--na", type=_bounded(float, 0, 2, above=True), default=None,
                         help="SR: numerical aperture of the objective (default: the training simulator's)")
    predict.add_argument("--dz-um", type=POSITIVE, default=None,
                         help="QPI: defocus distance ±dz in µm for a model's TIE base (default: the model's)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")
    predict.add_argument("--format", choices=("tiff", "ome-zarr"), default=None,
                         help="output format (default: the input's: OME-Zarr for a .zarr store, else TIFF)")
    workers = predict.add_mutually_exclusive_group()
    workers.add_argument("--workers", type=_bounded(int, 1, 1024), default=None,
                         help="spread the planes over N local dask worker processes (one GPU each where there are GPUs)")
    workers.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="spread the planes over the workers of a running dask.distributed scheduler "
                              "(e.g. tcp://host:8786, one started by dask-jobqueue)")
    predict.add_argument("--resume", action="store_true",
                         help="continue a stopped run: skip the planes it finished (same model, settings and input)")
    _add_reconstruction_flags(predict)
    predict.set_defaults(run=_predict)


def _add_calibrate_command(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="calibrate a model's error bars on your own input/target pairs",
        description="Reconstruct paired TIFF folders and fit split-conformal error bars (the std scale at 80, "
                    "90 and 95 %); writes the model with its calibration to --output, or into the model with "
                    "--in-place. Use pairs the model never saw in training.")
    calibrate.add_argument("--model", required=True, help="model file (.safetensors)")
    calibrate.add_argument("--input-dir", required=True, help="folder of input TIFFs")
    calibrate.add_argument("--target-dir", required=True, help="folder of target TIFFs (same file names)")
    written = calibrate.add_argument_group("output (one of)")
    written.add_argument("--output", default=None, help="new model file (.safetensors)")
    written.add_argument("--in-place", action="store_true", help="update --model itself")
    calibrate.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    calibrate.add_argument("--max-images", type=_bounded(int, 1, MAX_IMAGES), default=16,
                           help="use at most this many pairs (default: 16)")
    calibrate.add_argument("--bins", type=_bounded(int, 1, 64), default=1,
                           help="fit one scale per equal-count bin of the std (default: 1)")
    calibrate.add_argument("--pixel-size", type=POSITIVE, default=None,
                           help="raw input pixel µm (default: the data's, else the model's)")
    calibrate.add_argument("--refit-base", action="store_true",
                           help="QPI residual models: first refit the TIE base's regulariser on these pairs "
                                "(kept only if it lowers the base's error on them)")
    _add_reconstruction_flags(calibrate, exclude=("keep_samples",))
    calibrate.set_defaults(run=_calibrate)


def _add_evaluate_command(commands) -> None:
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
    source.add_argument("--images", type=_bounded(int, 1, MAX_IMAGES), default=8, help="simulated pairs (default: 8)")
    source.add_argument("--size", type=_bounded(int, MIN_SIMULATED_SIZE, MAX_SIMULATED_SIZE), default=128,
                        help="simulated image side (default: 128)")
    source.add_argument("--source-images", metavar="DIR",
                        help="QPI: phase objects from the test split (by file) of this folder of photos")
    source.add_argument("--test-set", choices=("unseen", "seen"), default="unseen",
                        help="simulated data outside the training distribution (default) or from it")
    optics = evaluate.add_argument_group("optics for the classical baselines")
    optics.add_argument("--na", type=_bounded(float, 0, 2, above=True), default=SR_NA,
                        help=f"SR numerical aperture (default: {SR_NA})")
    optics.add_argument("--wavelength", type=POSITIVE, default=SR_EMISSION_UM,
                        help=f"SR emission µm (default: {SR_EMISSION_UM})")
    optics.add_argument("--offset", type=_bounded(float), default=100.0, help="SR camera offset ADU (default: 100)")
    optics.add_argument("--dz", type=POSITIVE, default=QPI_DZ_UM, help=f"QPI defocus µm (default: {QPI_DZ_UM})")
    optics.add_argument("--qpi-wavelength", type=POSITIVE, default=QPI_WAVELENGTH_UM,
                        help=f"QPI µm (default: {QPI_WAVELENGTH_UM})")
    optics.add_argument("--pixel-size", type=POSITIVE, default=None,
                        help="raw input pixel µm (default: the data's, else the model's)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip the classical baselines")
    evaluate.add_argument("--out", default="out/evaluate", help="output folder (default: out/evaluate)")
    _add_reconstruction_flags(evaluate, exclude=("keep_samples",))
    evaluate.set_defaults(run=_evaluate)


def _add_simulate_command(commands) -> None:
    simulate = commands.add_parser("simulate", help="write a simulated dataset as paired TIFF folders")
    simulate.add_argument("--task", choices=("sr", "qpi"), required=True)
    simulate.add_argument("--out", required=True, help="folder; gets inputs/ and targets/")
    simulate.add_argument("--images", type=_bounded(int, 1, MAX_IMAGES), default=16, help="pairs (default: 16)")
    simulate.add_argument("--size", type=_bounded(int, MIN_SIMULATED_SIZE, MAX_SIMULATED_SIZE), default=256,
                          help="target image side in pixels (default: 256)")
    simulate.add_argument("--seed", type=SEED, default=0)
    simulate.add_argument("--split", choices=("train", "validation", "test"), default="train",
                          help="stream to write (default: train); SR's test split uses the unseen settings")
    simulate.add_argument("--source-images", metavar="DIR",
                          help="photos of --split (split by file) of this folder: QPI phase objects; "
                               "SR adds them as a structure family")
    simulate.set_defaults(run=_simulate)


def _add_info_command(commands) -> None:
    info = commands.add_parser("info", help="print a model file's metadata (JSON)")
    info.add_argument("model")
    info.set_defaults(run=_info)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cvdm argv``; returns the exit code (see the module docstring)."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except SystemExit as stop:  # a usage error (one line, code 2) or --help (0)
        return stop.code if isinstance(stop.code, int) else 0
    if unknown:
        print(f"cvdm {args.command}: error: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        code = args.run(args)
    except CVDMError as error:
        message = " ".join(str(error).split())  # always one line
        print(f"cvdm {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = "; the finished planes are kept: run again with --resume" if args.command == "predict" else ""
        print(f"cvdm {args.command}: stopped{hint}", file=sys.stderr)
        return EXIT_ABORTED
    except BrokenPipeError:  # output piped into a reader that quit early (`cvdm info m | head`)
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush stays quiet
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
