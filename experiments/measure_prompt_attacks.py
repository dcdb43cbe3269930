"""How often two prompt attacks get a forgotten concept back from text-to-image models: concept inversion and the
soft-prompt attack of `erasediff.prompt_attacks`, run on each model for each seed, from the held-out (test-split)
images of the concept, and measured on the samples of the found prompt (the share the `digits` classifier reads as
the concept). The shipped Unscrubbed and Retrain models are attacked too, unless --no-shipped. A thin script over
`run_prompt_attacks` and `prompt_attack_table` (`erasediff attack --preset digits-text` is the same from the CLI).

    python experiments/measure_prompt_attacks.py --models erasediff='results/digits-text/runs/erasediff-s{seed}/pipeline' \\
        esd='results/digits-text/runs/esd-s{seed}/pipeline' [--seeds 0 1 2] [--out results/digits-text/prompt-attacks]

'{seed}' in a folder: one model per seed, attacked at its own seed. Writes one record per (model, attack, seed) under
OUT/runs/, then OUT/prompt_attacks.json and OUT/prompt_attacks.md (per model and attack: the mean success over seeds,
a 95% bootstrap interval that resamples seeds and then samples within them, n, and the difference to Retrain in
points), all atomically; a rerun with the same settings reuses every finished record and does only the missing ones.
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

from erasediff.prompt_attacks import INVERSION, PROMPT_ATTACKS, prompt_attack_table, run_prompt_attacks, SOFT_PROMPT

ATTACKS = PROMPT_ATTACKS


def parse_models(items, shipped: bool, seeds) -> dict:
    """name -> pipeline folder, {seed: folder} ('{seed}' in the folder) or a shipped reference's name; ValueError for
    a malformed or repeated name."""
    models = {"unscrubbed": "unscrubbed", "retrain": "retrain"} if shipped else {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--models: give name=path pairs (a pipeline folder), got {item!r}")
        if name in models: raise ValueError(f"--models: the name {name!r} is given twice (or is a shipped model's)")
        models[name] = {s: Path(path.replace("{seed}", str(s))) for s in seeds} if "{seed}" in path else Path(path)
    if not models: raise ValueError("--models: nothing to attack (give name=path pairs, or leave out --no-shipped)")
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[], metavar="NAME=PIPELINE", help="unlearned pipeline folders")
    ap.add_argument("--no-shipped", action="store_true", help="leave out the shipped Unscrubbed and Retrain")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    ap.add_argument("--preset", default="digits-text")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--init-prompt", default=None, help="the forgotten concept's prompt, the soft-prompt attack's start "
                                                        "(default: the preset's forget prompt)")
    ap.add_argument("--inversion-steps", type=int, default=INVERSION.steps)
    ap.add_argument("--soft-steps", type=int, default=SOFT_PROMPT.steps)
    ap.add_argument("--n-samples", type=int, default=INVERSION.n_samples)
    ap.add_argument("--n-heldout", type=int, default=None, help="held-out images per seed (default: all of the concept's)")
    ap.add_argument("--out", type=Path, default=Path("results/digits-text/prompt-attacks"))
    args = ap.parse_args(argv)
    try:
        models = parse_models(args.models, not args.no_shipped, args.seeds)
        inversion = replace(INVERSION, steps=args.inversion_steps, n_samples=args.n_samples)
        softprompt = replace(SOFT_PROMPT, steps=args.soft_steps, n_samples=args.n_samples)
    except ValueError as e:
        ap.error(str(e))
    try:
        done = run_prompt_attacks(models, args.attacks, args.seeds, args.out, preset=args.preset,
                                  forget_prompt=args.init_prompt, n_heldout=args.n_heldout, inversion=inversion,
                                  softprompt=softprompt, log=lambda s: print(s, flush=True))
    except (ValueError, OSError) as e:
        ap.error(str(e))
    prompt_attack_table(args.out, list(models), args.attacks, args.seeds, name="prompt_attacks")
    print((args.out / "prompt_attacks.md").read_text())
    print(f"computed {done['computed']}, reused {done['reused']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
