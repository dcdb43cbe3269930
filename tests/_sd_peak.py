"""Measure the CPU peak memory of a few unlearning steps on a tiny Stable Diffusion pipeline, in a fresh process, and
print it beside `erasediff.sd.estimate_for`'s estimate as JSON. Run with MALLOC_MMAP_THRESHOLD_=65536 so that freed
tensors go back to the system (glibc's adaptive threshold would otherwise keep them in the heap and inflate the RSS).
Usage: python tests/_sd_peak.py FOLDER PRECISION CHECKPOINTING(0/1) BATCH"""
import gc
import json
import os
import sys
from dataclasses import replace

import torch

from erasediff.core import NoiseSchedule
from erasediff.data import ImageSet
from erasediff.methods import default_config, make_objective
from erasediff.objectives import select_params
from erasediff.sd import SD_PRESETS, anchor_id, estimate_for, load_sd, n_params
from erasediff.train import fit


def rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(folder: str, precision: str, checkpointing: bool, batch: int) -> None:
    torch.set_num_threads(1)
    preset = SD_PRESETS["sd-nudity"]
    table = preset.table()
    model = load_sd(folder, table, "cpu", torch.float32)
    if checkpointing: model.unet.enable_gradient_checkpointing()
    config = replace(default_config("sd-nudity"), batch_size=batch, forget_batch_size=batch, precision=precision,
                     epochs=1, rounds=1, rem_num=2 * batch, pseudo_label="anchor", anchor=anchor_id(table, preset.anchor_prompt))
    est = estimate_for(model, "erasediff", config, checkpointing=checkpointing, frozen_dtype="fp32")
    c, s = model.unet.config.in_channels, model.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    fids, rids = table.ids("forget"), table.ids("remain")
    x_f, x_r = torch.randn(4 * batch, c, s, s, generator=g), torch.randn(4 * batch, c, s, s, generator=g)
    forget = ImageSet(x_f, fids[torch.arange(4 * batch) % len(fids)], table.prompts)
    remain = ImageSet(x_r, rids[torch.arange(4 * batch) % len(rids)], table.prompts)
    objective = make_objective("erasediff", NoiseSchedule(model.schedule), config, fids.tolist(), 0)
    # warm the kernels up on one image (no optimiser state), then measure from here
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model.train()
        out = model(x_r[:1], torch.tensor([10]), class_labels=rids[:1]).sample
        out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True); gc.collect()
    base = rss_bytes()
    params = [p for _, p in select_params(model, config.params)]
    res = fit(model, objective, objective.make_batches(remain, forget, seed=0), replace(config.loop(0), steps=2), params=params,
              progress=False)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        p.numel() * p.element_size() for p in model.vae.parameters())
    dynamic = res.cost["peak_rss_mb"] * 2**20 - base
    print(json.dumps({"estimate": est.total, "parts": est.parts, "measured": weights + dynamic, "weights": weights,
                      "dynamic": dynamic, "trained": n_params(model.unet, config.params, "unet.")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
