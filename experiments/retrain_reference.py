"""The Retrain reference of the unconditional measurements (experiments/measure_unconditional_attributes_images.py):
the digits unconditional UNet retrained from scratch without one class (the shipped model's recipe: its preset, 2000
steps, seed), then the class shares of 1,000 of its samples per evaluation seed (the same sampler and classifier as
those measurements). About 10 min of training on 2 CPU cores, plus 40 s per evaluation seed.

    python experiments/retrain_reference.py --forget-class 8 [--seeds 0 1 2] [--run runs/retrain-8] [--out FILE.json]

Trains into --run (default runs/retrain-<class>); prints one JSON line per seed and, with --out, writes the list there.
"""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from erasediff.core import NoiseSchedule, make_unet
from erasediff.runtime import atomic_write_json
from erasediff.data import ForgetSpec, InfiniteBatches, make_splits
from erasediff.train import DiffusionObjective, class_shares, fit, get_preset, load_reference


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget-class", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--run", type=Path, default=None, help="training folder (default runs/retrain-<class>)")
    ap.add_argument("--out", type=Path, default=None, help="write the shares (JSON) here")
    args = ap.parse_args(argv)
    p = get_preset("digits")
    train, test = p.load_data()
    splits = make_splits(train, test, ForgetSpec(classes=(args.forget_class,)))   # unknown class -> ValueError
    torch.manual_seed(p.train.seed)
    model = make_unet(replace(p.unet, num_classes=None))
    res = fit(model, DiffusionObjective(NoiseSchedule(p.schedule), 0.0),
              InfiniteBatches(splits.remain, p.train.batch_size, seed=p.train.seed),
              replace(p.train, sample_every=0, ckpt_every=0), out=args.run or Path(f"runs/retrain-{args.forget_class}"),
              desc=f"retrain without {args.forget_class}", progress=False)
    clf = load_reference("digits", "classifier")
    rows = []
    for seed in args.seeds:
        sh = class_shares(res.model, clf, NoiseSchedule(p.schedule), p.sampler, 1000, seed=seed, progress=False)
        rows.append({"forget_class": args.forget_class, "seed": seed, "share": sh[args.forget_class], "shares": sh})
        print(json.dumps(rows[-1]), flush=True)
    if args.out: atomic_write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
