"""Core speed figures on the `digits` preset's UNet: erasediff's training step against a plain PyTorch loop
(`fit` + DiffusionObjective: CFG dropout, antithetic t, clipping, EMA) and `erasediff.core.sample` against a DDIM loop
over diffusers' DDIMScheduler (throughput ratios, target >= 0.95 each), and the peak RSS of the process.
The two sides are interleaved over `--rounds` rounds and their medians compared, so machine load affects both alike.

    python experiments/bench_core.py [--steps 20] [--rounds 3] [--threads 2]

Prints the figures to stdout; writes nothing.
"""
import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from erasediff.core import NoiseSchedule, SamplerConfig, make_unet, sample, sample_with_diffusers
from erasediff.data import InfiniteBatches, load_digits_set
from erasediff.train import DiffusionObjective, LoopConfig, fit, get_preset


def plain_loop(model, batches, steps, lr, schedule):
    "The textbook DDPM step: no EMA, no clipping, no label dropout."
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ab = schedule.alpha_bars
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        t = torch.randint(0, 1000, (len(x),))
        noise = torch.randn_like(x)
        a = ab[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x + (1 - a).sqrt() * noise, t, class_labels=y).sample, noise)
        opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - t0


def ours_loop(model, batches, steps, lr, schedule):
    cfg = LoopConfig(steps=steps, batch_size=batches.batch_size, lr=lr, warmup_steps=1, log_every=10, ckpt_every=0)
    t0 = time.perf_counter()
    fit(model, DiffusionObjective(schedule), batches, cfg, progress=False)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="train steps per measurement")
    ap.add_argument("--samples", type=int, default=100, help="images per sampling measurement")
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("digits")
    schedule = NoiseSchedule(preset.schedule)
    data = load_digits_set("train")
    bs = preset.train.batch_size
    torch.manual_seed(0)
    model = make_unet(preset.unet)
    plain_loop(model, InfiniteBatches(data, bs), 2, 1e-3, schedule)          # warm-up
    t_plain, t_ours = [], []
    for r in range(args.rounds):
        t_plain.append(plain_loop(model, InfiniteBatches(data, bs, seed=r), args.steps, 1e-3, schedule))
        t_ours.append(ours_loop(model, InfiniteBatches(data, bs, seed=r), args.steps, 1e-3, schedule))
    model.eval()
    cfg = SamplerConfig("ddim", steps=args.ddim_steps, w=0)
    labels = torch.arange(10).repeat(args.samples // 10 + 1)[:args.samples]
    s_ours, s_ref = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter(); sample(model, schedule, args.samples, labels=labels, config=cfg, generator=torch.Generator().manual_seed(r))
        s_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); sample_with_diffusers(model, schedule, args.samples, labels=labels, config=cfg, generator=torch.Generator().manual_seed(r))
        s_ref.append(time.perf_counter() - t0)
    tp, to = statistics.median(t_plain), statistics.median(t_ours)
    sr, so = statistics.median(s_ref), statistics.median(s_ours)
    print(f"UNet: digits preset, batch {bs}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"train step: plain loop {tp / args.steps * 1000:.1f} ms, erasediff loop {to / args.steps * 1000:.1f} ms")
    print(f"train throughput ratio (ours / plain): {tp / to:.3f}   (target >= 0.95)")
    print(f"DDIM {args.ddim_steps} steps x {args.samples} images: diffusers loop {sr:.2f} s, erasediff {so:.2f} s")
    print(f"sampling throughput ratio (ours / diffusers): {sr / so:.3f}   (target >= 0.95)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
