"""The SR predictor base b(y) on 512² outputs: whole (512-px base tiles) against 256-px base tiles.

    PYTHONPATH=src nice .venv/bin/python benchmarks/base_tiles.py      # ~3 min on 1 loaded core

12 images of SR_UNSEEN_TEST (its six kinds in turn), widefield 256² → 512², the shipped
cvdm-sr-residual's predictor through ``reconstruct_base``; MS-SSIM and PSNR against the target
(CARE-style affine fit), their paired difference (± standard error over images) and the time.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
torch.set_num_threads(1)
print('device: CPU, 1 thread, torch', torch.__version__)
import napari_cvdm.engine as engine
from napari_cvdm import metrics
from napari_cvdm.checkpoint import load_model
from napari_cvdm.data.simulate import SR_UNSEEN_TEST, simulate_sr
model, info = load_model(Path(__file__).resolve().parents[1] / 'models' / 'cvdm-sr-residual.safetensors', 'cpu')
rng = np.random.default_rng(np.random.SeedSequence([0, 7]))
rows=[]
for i in range(12):
    s = simulate_sr(rng, 512, kind=SR_UNSEEN_TEST.kinds[i % 6], config=SR_UNSEEN_TEST)
    target = metrics.to_unit_range(s.target)
    out={}
    for tile in (512, 256):
        engine.tiling.BASE_TILE = tile
        t=time.perf_counter(); b = engine.reconstruct_base(model, info, s.widefield, device='cpu', input_pixel_size_um=s.camera_pixel_um); dt=time.perf_counter()-t
        est = metrics.scale_to_reference(b, target)
        out[tile]=(metrics.ms_ssim(est,target,data_range=1.0), metrics.psnr(est,target,data_range=1.0), dt)
    rows.append(out)
    print(SR_UNSEEN_TEST.kinds[i%6], {k:tuple(round(x,4) for x in v) for k,v in out.items()}, flush=True)
for tile in (512,256):
    print(tile, 'MS-SSIM', np.mean([r[tile][0] for r in rows]), 'PSNR', np.mean([r[tile][1] for r in rows]), 's', np.mean([r[tile][2] for r in rows]))
d=[r[256][1]-r[512][1] for r in rows]; print('dPSNR 256-512', np.mean(d), np.std(d,ddof=1)/np.sqrt(len(d)))
d=[r[256][0]-r[512][0] for r in rows]; print('dMSSSIM 256-512', np.mean(d), np.std(d,ddof=1)/np.sqrt(len(d)))
