"""The memory estimate of a Stable Diffusion run against the measured CPU peak, on a 64 px tiny pipeline: two EraseDiff
steps of batch 16 + 16 in a fresh process per setting (fp32 / bf16, with and without gradient checkpointing), and the
estimates for Stable Diffusion v1.4 at batch 16 (from its architecture alone).
Usage: python experiments/bench_sd_memory.py [BATCH]   (about 2.5 min on 2 CPU cores)"""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from erasediff.methods import default_config
from erasediff.sd import TINY_SD, estimate_architecture, tiny_pipeline

batch = sys.argv[1] if len(sys.argv) > 1 else "16"
print(f"load: {os.getloadavg()[0]:.2f}")
with tempfile.TemporaryDirectory() as tmp:
    folder = tiny_pipeline(Path(tmp) / "tiny64", replace(TINY_SD, image_size=64, unet_channels=(64, 128)))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"tiny pipeline, batch {batch} + {batch}: estimate / measured CPU peak (MiB)")
    for precision, ckpt in (("fp32", 0), ("bf16", 0), ("fp32", 1), ("bf16", 1)):
        res = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "tests" / "_sd_peak.py"), str(folder), precision,
                              str(ckpt), batch], env=env, capture_output=True, text=True, check=True)
        d = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {precision}, checkpointing {bool(ckpt)!s:5}: {d['estimate'] / 2**20:7.1f} / {d['measured'] / 2**20:7.1f}"
              f" = {d['estimate'] / d['measured']:.3f}")
print("Stable Diffusion v1.4, sd-nudity (EraseDiff, batch 16 + 16, 813 M trained weights), estimates (GiB):")
for precision in ("fp32", "bf16"):
    for ckpt in (False, True):
        e = estimate_architecture("sd-v1", config=replace(default_config("sd-nudity"), precision=precision), checkpointing=ckpt,
                                  frozen_dtype="bf16", n_latents=1600, cuda=True)
        print(f"  {precision}, checkpointing {ckpt!s:5}: {e.gib():5.1f}")
