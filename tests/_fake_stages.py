"""Fast deterministic stand-ins for the reproduction's three stages (unlearn, eval, relearn), importable by the
worker processes of a parallel `reproduce` (`install` is passed as its `worker_setup`)."""
import hashlib
import json
from pathlib import Path

CALLS: list = []


def value(*parts) -> float:
    "A deterministic number in [0, 1) from the parts (what a stage 'measured')."
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 16**8


def _key(checkpoint) -> str:
    return Path(checkpoint).parent.parent.parent.name if Path(checkpoint).name == "unet" else Path(checkpoint).name


def unlearn(preset, forget, out, *, method, seed, config=None, eval_per_class=None, progress=True, device=None):
    CALLS.append(("unlearn", method, seed))
    (out / "unet").mkdir(parents=True)
    (out / "unet" / "weights.bin").write_bytes(f"{method}-{seed}".encode())
    (out / "metrics.json").write_text(json.dumps({"unlearn_seconds": 10 + value(method, seed), "peak_rss_mb": 500.0}))


def evaluate(checkpoint, preset, *, out, n_per_class, seed, **kw):
    key = _key(checkpoint)
    CALLS.append(("eval", key, seed))
    v = lambda *p: value(key, seed, *p)
    m = {"accuracy_by_w": {w: {"forget": v("f", w), "remain": v("r", w)} for w in ("0", "0.5", "1")},
         "accuracy_worst": {"forget": v("fw"), "remain": v("rw")},
         "classifier_fd": {"forget": 10 * v("fdf"), "remain": v("fdr")},
         "precision_recall": {"remain": {"precision": v("p"), "recall": v("rc")}},
         "forget_confidence": {"0.5": {"entropy": v("h"), "p_forget": v("pf")}},
         "weight_distance": {"relative": v("wd")},
         "mia": {"avg_loss": {"auc": v("auc")}, "chance": {"avg_loss": {"auc": {"mean": 0.5, "std": 0.03}}}}}
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(m))
    return m


def relearn(checkpoint, preset, config, *, seed, **kw):
    key = _key(checkpoint)
    CALLS.append(("relearn", key, seed))
    v = lambda *p: value(key, seed, "relearn", *p)
    return {"auc": v("auc"), "steps_to_level": 100 * v("steps"), "recognition_last": v("last"),
            "null_leakage": v("null"), "neighbour_leakage": v("neighbours"), "seed": seed}


def install(setattr_=setattr) -> None:
    "Replace the stages of erasediff.reproduce by the fakes (in this process)."
    import erasediff.reproduce as R
    setattr_(R, "unlearn", unlearn)
    setattr_(R, "evaluate_checkpoint", evaluate)
    setattr_(R, "relearn_attack", relearn)


def _slow_unlearn(preset, forget, out, *, method, seed, **kw):
    "Announce the start (a file `started-<method>-<seed>` beside the runs), then take a minute; erasediff/seed0 fails."
    root = Path(out).parents[3]
    (root / f"started-{method}-{seed}").write_text("")
    if (method, seed) == ("erasediff", 0): raise RuntimeError("boom: a failing stage")
    import time
    time.sleep(60)
    unlearn(preset, forget, out, method=method, seed=seed)


def install_slow(setattr_=setattr) -> None:
    "The fakes, with an unlearn stage that takes a minute (and fails for erasediff/seed0)."
    import erasediff.reproduce as R
    install(setattr_)
    setattr_(R, "unlearn", _slow_unlearn)
