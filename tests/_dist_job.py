"""One job run on one process (`python tests/_dist_job.py OUT`) or on several (`accelerate launch --cpu
--num_processes 2 tests/_dist_job.py OUT`): a few training steps, a few EraseDiff steps and a sharded sampling run.
Rank 0 saves what each produced to OUT/result.pt; tests/test_distributed.py compares the two."""
import sys
from pathlib import Path

import torch

from erasediff.core import NoiseSchedule, SamplerConfig, data_parallel, generate, is_main_process, make_unet
from erasediff.data import InfiniteBatches
from erasediff.train import DiffusionObjective, LoopConfig, fit, get_preset, load_reference
from erasediff.unlearn import unlearn

out = Path(sys.argv[1])
rank, world = data_parallel()
torch.set_num_threads(1)
preset = get_preset("digits")
schedule = NoiseSchedule(preset.schedule)
train, _ = preset.load_data()

# 1. training: 4 steps of global batch 16 from the same initial weights, checkpoints written by rank 0 only
torch.manual_seed(0)
model = make_unet(preset.unet)
loop = LoopConfig(steps=4, batch_size=16, lr=1e-3, warmup_steps=1, ema_decay=0.9, log_every=1, ckpt_every=2)
res = fit(model, DiffusionObjective(schedule, p_uncond=0.1), InfiniteBatches(train, 16, seed=0), loop,
          out=out / "train", progress=False)
trained = {k: v.detach().clone() for k, v in res.model.state_dict().items()}


class Stop(Exception):
    "An interruption after step 3, past the step-2 checkpoint (every process stops at the same step)."


def stop_at_3(step, model, logs):
    if step == 3: raise Stop


for attempt in ("interrupted", "resumed"):     # the same run, killed after step 3, then resumed from its step-2 checkpoint
    torch.manual_seed(0)
    try:
        again = fit(make_unet(preset.unet), DiffusionObjective(schedule, p_uncond=0.1), InfiniteBatches(train, 16, seed=0),
                    loop, out=out / "resume", progress=False, resume=attempt == "resumed",
                    callback=stop_at_3 if attempt == "interrupted" else None)
    except Stop:
        continue
resumed = {k: v.detach().clone() for k, v in again.model.state_dict().items()}

# 2. EraseDiff: 4 outer steps (2 rounds, so 2 inner loops), adaptive lambda (every process must agree on it)
cfg = dict(epochs=1, rounds=2, rem_num=32, batch_size=16, forget_batch_size=16, lam="auto", K=2)
m = unlearn("digits", (2, 8), out / "unlearn", config=cfg, eval_per_class=0, progress=False, overwrite=True)

# 3. sampling: 30 class-conditional images in batches of 4 (8 batches, the last one short)
unet = load_reference("digits", "unscrubbed")
x = generate(unet, schedule, torch.arange(10).repeat(3), config=SamplerConfig("ddim", steps=5, w=0.5), batch_size=4,
             seed=3, progress=False)

if is_main_process():
    from diffusers import UNet2DModel
    unlearned = UNet2DModel.from_pretrained(out / "unlearn" / "unet").state_dict()
    torch.save({"world": world, "trained": trained, "resumed": resumed, "train_history": res.history, "unlearned": unlearned,
                "unlearn_final": m["final"], "samples": x, "files": sorted(str(p.relative_to(out)) for p in out.rglob("*"))},
               out / "result.pt")
print(f"rank {rank} of {world}: done", flush=True)
if torch.distributed.is_initialized():      # tear the process group down before exit (an undestroyed gloo group can
    torch.distributed.barrier()             # abort the interpreter at shutdown: "terminate called without an active
    torch.distributed.destroy_process_group()   # exception")
