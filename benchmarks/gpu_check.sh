#!/usr/bin/env bash
# GPU check: a few minutes on one GPU to confirm napari-cvdm's CUDA path.
#
#   benchmarks/gpu_check.sh                 # PYTHON=/path/to/python to choose the interpreter
#
# 1. the test suite's CUDA-marked tests (pytest -m cuda);
# 2. bf16 vs fp32 denoiser throughput (passes/s, TFLOP/s, share of the card's peak) and an
#    end-to-end 1024², N = 8 reconstruction with the paper preset (benchmarks/gpu_check.py;
#    random weights: timing only);
# 3. DDP: a probe step over NCCL and `cvdm train` under torchrun, on one rank (two where two
#    GPUs exist). One rank has no process group in `cvdm train` (world size 1 trains plainly),
#    so the probe is what exercises NCCL on a one-GPU machine.
# Without a CUDA device: one line, exit 0. Otherwise every part runs; the exit status is
# non-zero when any part failed, and a summary names them.
set -u
cd "$(dirname "$0")/.."
# the repository's .venv (scripts/setup.sh) when there is one, else python on PATH
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python}; fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "gpu_check: cannot import torch with $PYTHON (set PYTHON=...)" >&2
    exit 2
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$gpus" -lt 1 ]; then
    echo "no CUDA device: GPU check skipped"
    exit 0
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
ranks=$(( gpus >= 2 ? 2 : 1 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()

part() {  # part NAME COMMAND...: run it, time it, remember a failure
    local name=$1 start=$SECONDS
    shift
    echo; echo "=== $name"
    if "$@"; then echo "--- $name: ok ($(( SECONDS - start )) s)"
    else echo "--- $name: FAILED (exit $?, $(( SECONDS - start )) s)"; failed+=("$name"); fi
}

"$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, ' + \
', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
part "CUDA-marked tests" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider -p no:warnings tests
part "throughput and 1024² reconstruction" "$PYTHON" benchmarks/gpu_check.py --device cuda
part "NCCL DDP probe, $ranks rank(s)" "$PYTHON" -m torch.distributed.run --standalone \
    --nproc_per_node="$ranks" benchmarks/gpu_check.py --device cuda --ddp-probe
part "cvdm train under torchrun, $ranks rank(s)" "$PYTHON" -m torch.distributed.run --standalone \
    --nproc_per_node="$ranks" -m napari_cvdm.cli train --task sr --preset tiny --steps 2 \
    --simulated-images 4 --simulated-size 64 --device cuda --output "$work/x.safetensors"
[ -f "$work/x.safetensors" ] || failed+=("train wrote no model")

echo
if [ ${#failed[@]} -eq 0 ]; then echo "GPU check: all parts passed"; exit 0; fi
echo "GPU check: failed: ${failed[*]}"
exit 1
