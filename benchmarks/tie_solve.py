"""The QPI base's whole-plane stage on a large stack: noise estimate and Tikhonov Laplacian solve.

The engine bounds the silence between progress reports (5 s); the TIE base of a 4096² plane is
one step. Times, in turn in one process, the code used (half-spectrum ``rfft2`` solve,
separable Laplacian-difference mask) against the textbook forms (full complex FFT, nine
shifted terms) and checks that both give the same numbers.

    PYTHONPATH=src .venv/bin/python benchmarks/tie_solve.py --size 4096
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.physics import noise, tie  # noqa: E402


def full_spectrum_solve(rhs: np.ndarray, pixel_um: float, regularization: float) -> np.ndarray:
    symbol = tie.laplacian_symbol(rhs.shape[-2:], pixel_um)
    filt = symbol / (symbol**2 + regularization)
    filt[0, 0] = 0.0
    return np.real(np.fft.ifft2(np.fft.fft2(rhs) * filt))


def nine_term_noise(stack: np.ndarray) -> float:
    plane = stack.mean(axis=0) / stack.mean()
    mask = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    h, w = plane.shape
    response = np.abs(sum(mask[i, j] * plane[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3)))
    block = min(noise.NOISE_BLOCK_PX, *response.shape)
    rows, cols = response.shape[0] // block, response.shape[1] // block
    blocks = response[:rows * block, :cols * block].reshape(rows, block, cols, block).transpose(0, 2, 1, 3)
    return float(np.percentile(np.median(blocks.reshape(rows * cols, -1), axis=1), 10) / (0.6745 * 6.0)
                 * np.sqrt(2.0))


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stack = 1.0 + 0.05 * np.random.default_rng(0).normal(size=(2, args.size, args.size))
    rhs = stack[1] - stack[0]
    print(f"{platform.processor() or 'cpu'}, numpy {np.__version__}; a {args.size}² stack, each pair in turn")
    for _ in range(args.repeats):
        t_old, n_old = timed(nine_term_noise, stack)
        t_new, n_new = timed(noise.defocus_relative_noise_std, stack)
        s_old, p_old = timed(full_spectrum_solve, rhs, 0.21, 1e-3)
        s_new, p_new = timed(tie.inverse_laplacian, rhs, 0.21, 1e-3)
        print(f"noise estimate {t_old:.2f} → {t_new:.2f} s ({t_old / t_new:.2f}×, Δ {abs(n_old - n_new):.1e}); "
              f"solve {s_old:.2f} → {s_new:.2f} s ({s_old / s_new:.2f}×, max Δφ {np.abs(p_old - p_new).max():.1e})")


if __name__ == "__main__":
    main()
