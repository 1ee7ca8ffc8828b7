"""The QPI regression baseline at the shipped residual model's training budget, on the unseen test photos.

The baseline is the shipped model's denoiser U-Net (same preset and padding, no γ input)
trained with an L2 loss to predict the residual ``r = (φ − b) / s`` from the condition
``[I(−dz), I(+dz), b]`` in one pass, so it estimates the posterior mean of the same
residual the diffusion samples; its phase is ``b + s·r̂``. It sees the shipped model's
normalisation and its TIE base b (the refitted one), through the project's own
:class:`~napari_cvdm.train.Trainer` data (simulated pairs from the training split of the
photos, 96² patches, batch 8, AdamW at the shipped runs' learning rate and schedule).

It always regresses on the bare TIE base, also when the model corrects it (``physics_predictor``);
``--noise-map`` gives it the stack's noise-level map ν as well (``[I, b, ν]``), as the shipped
model's base correction gets, for a comparison on the same inputs. Record which in the notes.

It writes the network (safetensors) and a JSON record of its settings and budget;
``benchmarks/report.py`` scores it on the unseen test sets (the shipped one is
``benchmarks/baselines/qpi-regression/``, trained with ``--noise-map``).

Training can run in chunks (each well under the time one job should take): ``--chunk-steps N``
stops after N more steps, saving the network and the optimiser's state; ``--resume`` continues
from them, with the same batches and learning rates an uninterrupted run would have had.

Usage::

    python benchmarks/qpi_regression.py --out runs/qpi-regression --noise-map --chunk-steps 2000
    python benchmarks/qpi_regression.py --out runs/qpi-regression --noise-map --chunk-steps 2000 --resume   # again
    python benchmarks/report.py --only qpi --regression runs/qpi-regression
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.checkpoint import write_atomically  # noqa: E402
from napari_cvdm.residual import noise_level_map  # noqa: E402
from napari_cvdm.model import DENOISER_PRESETS, UNet  # noqa: E402
from napari_cvdm.physics.noise import defocus_relative_noise_std  # noqa: E402
from napari_cvdm.engine.plane import prepare_plane  # noqa: E402
from napari_cvdm.io.progress import file_digest  # noqa: E402
from napari_cvdm.train import TrainConfig, Trainer, _learning_rate_factor  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cvdm-qpi-residual.safetensors"


def _network(model, noise_map: bool) -> UNet:
    config = model.config
    return UNet(config.y_channels + config.x_channels + int(noise_map), config.x_channels,
                DENOISER_PRESETS[config.preset], padding=config.padding)


def _inputs(y: torch.Tensor, config, noise_map: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's input ``[I, b]`` (+ ν) and the TIE base b from a training batch's ``y``
    (``[I, b]``, or ``[I, b, ν]`` for a model whose base is corrected)."""
    tie = slice(config.y_channels, config.y_channels + config.x_channels)
    return y[:, :tie.stop + int(noise_map)], y[:, tie]


def train_regression(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    weights, state_file = args.out / "regression.safetensors", args.out / "optimiser.pt"
    # what a resumed run must share with the stopped one (also written with every checkpoint)
    identity = {"planned_steps": args.steps, "simulated_images": args.simulated_images, "seed": args.seed,
                "noise_map": args.noise_map, "model_sha256": file_digest(args.model),
                "source_images": _photo_names(args.source_images)}
    done, previous_s = 0, 0.0
    if args.resume:
        if not state_file.is_file():
            sys.exit(f"qpi_regression: {args.out} holds no stopped run to resume (no {state_file.name})")
        record = json.loads((args.out / "regression.json").read_text())
        done, previous_s = int(record["steps"]), float(record["wall_time_s"])
        changed = [name for name, value in identity.items() if record.get(name) != value]
        if changed:
            sys.exit(f"qpi_regression: the stopped run in {args.out} had other {', '.join(changed)}; "
                     "resume it with its settings")
        if done >= args.steps:
            sys.exit(f"qpi_regression: the run in {args.out} is complete ({done} steps)")
    elif weights.exists() and not args.overwrite:
        sys.exit(f"qpi_regression: {weights} exists; pass --resume to continue it or --overwrite to replace it")
    config = TrainConfig(task="qpi", init_model=str(args.model), patch_size=96, batch_size=8, steps=args.steps,
                         learning_rate=2e-4, simulated_images=args.simulated_images, simulated_size=256,
                         source_images=str(args.source_images), seed=args.seed, device="cpu",
                         validate_every=0, checkpoint_every=0, calibrate=False,
                         base_correction=args.noise_map,
                         output=str(args.out / "unused-diffusion.safetensors"), overwrite=True)
    start = time.perf_counter()  # the wall time counts each chunk's data preparation too
    trainer = Trainer(config)
    scale = float(trainer.model.config.residual_scale)
    print(f"data ready in {time.perf_counter() - start:.0f} s", flush=True)
    torch.manual_seed(args.seed)
    net = _network(trainer.model, args.noise_map)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _learning_rate_factor(config))
    if done:  # AdamW's moments and the schedule where the stopped run left them (the Trainer's format)
        net.load_state_dict(load_file(str(weights)))
        state = torch.load(state_file, weights_only=True)
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    losses = []

    def save(steps_done: int) -> dict:
        # the record goes with every checkpoint, so a stopped run is scorable and says how far it got
        save_file(net.state_dict(), str(weights))
        buffer = io.BytesIO()
        torch.save({"optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
        write_atomically(state_file, buffer.getvalue())
        record = {"steps": steps_done, **identity, "wall_time_s": previous_s + time.perf_counter() - start,
                  "model": args.model.name, "device": f"cpu, {torch.get_num_threads()} threads",
                  "final_loss": float(np.mean(losses[-200:]))}
        (args.out / "regression.json").write_text(json.dumps(record, indent=1))
        return record

    end = min(args.steps, done + args.chunk_steps) if args.chunk_steps else args.steps
    record = None
    for step in range(done, end):
        batch = trainer.draw(step)
        condition, tie = _inputs(batch.y, trainer.model.config, args.noise_map)
        residual = (batch.x0 - tie) / scale
        loss = (net(condition) - residual).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimiser.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 200 == 0 or step + 1 == end:
            print(f"step {step + 1}/{args.steps}: loss {np.mean(losses[-200:]):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            record = save(step + 1)
    trainer.close()
    print(json.dumps(record))


def _photo_names(folder: Path) -> list[str]:
    """The photos' file names: what a resumed run must draw its phase objects from again."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file())


@torch.no_grad()
def regression_phase(net: UNet, model, info, stack: np.ndarray, noise_map: bool) -> np.ndarray:
    """The regression's phase (rad) of one stack ``(2, H, W)``: ``b + s·r̂`` in target units (b: TIE)."""
    # the bare TIE base's plane, also of a model that corrects it
    tie_model = SimpleNamespace(config=dataclasses.replace(model.config, base="physics"))
    plane = prepare_plane(tie_model, info, stack, 1, torch.device("cpu"), {})
    condition = plane.condition
    if noise_map:
        level = noise_level_map(defocus_relative_noise_std(stack), stack.shape)
        condition = torch.cat([condition, torch.from_numpy(level)[None]], dim=1)
    residual = net(condition)[0].numpy()
    value = plane.scale * (plane.base + model.config.residual_scale * residual) + plane.offset
    return value[0]



def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the network and its record")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the residual model whose budget and base it gets")
    parser.add_argument("--source-images", type=Path, default=Path("../shared/data/natural-images"))
    parser.add_argument("--steps", type=int, default=12400,
                        help="the shipped model's 800 + 3000 + 2000 + 3000 + 3600 steps")
    parser.add_argument("--simulated-images", type=int, default=864, help="the shipped runs' 96 + 4 × 192 pairs")
    parser.add_argument("--noise-map", action="store_true", help="give the network the noise-level map ν too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--resume", action="store_true", help="continue the stopped run in --out")
    parser.add_argument("--chunk-steps", type=_count, default=0, help="stop after this many more steps (0: to the end)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device: cpu ({platform.processor() or 'cpu'}), torch {torch.__version__}, {args.threads} threads")
    train_regression(args)


if __name__ == "__main__":
    main()
