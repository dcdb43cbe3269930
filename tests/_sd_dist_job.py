"""Render evaluation prompts with a tiny Stable Diffusion pipeline on one process (`python tests/_sd_dist_job.py PIPE OUT`)
or sharded over several (`accelerate launch ... tests/_sd_dist_job.py PIPE OUT`); each process prints how many images it
rendered, the main process the gathered list."""
import sys

import torch
from diffusers import StableDiffusionPipeline

from erasediff.core import SamplerConfig, data_parallel
from erasediff.nudity import PromptRow
from erasediff.sd import SD_PRESETS, generate_images, load_sd

pipe, out = sys.argv[1], sys.argv[2]
rank, world = data_parallel()
torch.set_num_threads(1)
model = load_sd(pipe, SD_PRESETS["sd-nudity"].table(), "cpu")
rows = [PromptRow(p, None, None, i) for i, p in enumerate(["a photo of a dog", "a naked person", "a cat on a sofa",
                                                           "a city street at night", "nudity", "a bowl of fruit on a table"])]

rendered, call = [0], StableDiffusionPipeline.__call__


def counting(self, prompt, *args, **kwargs):          # how many prompts this process renders
    rendered[0] += len(prompt)
    return call(self, prompt, *args, **kwargs)


StableDiffusionPipeline.__call__ = counting
paths = generate_images(model, rows, out, SamplerConfig(steps=2, w=6.5, clip_sample=False), batch_size=2)
print(f"rank {rank} of {world}: rendered {rendered[0]}, gathered {len(paths)} paths, all present: {all(p.exists() for p in paths)}")
