"""How fast the command line answers when no work is asked for: `erasediff --help`, a subcommand's help and an
argument error (each a fresh process, median of `--repeats`), beside what importing the library costs (the
parser imported it before it was made import-free: that was the wall time of every `--help`). Ratios are from one run,
so machine load affects both sides alike.

    python experiments/bench_cli.py [--repeats 5]

Prints the figures to stdout; writes nothing.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "erasediff --help": ["-m", "erasediff.cli", "--help"],
    "erasediff unlearn --help": ["-m", "erasediff.cli", "unlearn", "--help"],
    "erasediff unlearn --lr inf (argument error)": ["-m", "erasediff.cli", "unlearn", "--out", "x", "--lr", "inf"],
    "import the library (what --help paid before)": ["-c", "import erasediff.cli; erasediff.cli._lib()"],
}


def wall(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    n = ap.parse_args().repeats
    print(f"load before: {os.getloadavg()[0]:.2f} (1-minute average), {os.cpu_count()} cores")
    times = {k: [] for k in COMMANDS}
    for _ in range(n):                                   # interleaved: load drifts affect every command alike
        for k, args in COMMANDS.items(): times[k].append(wall(args))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:48s} median {v:6.3f} s  (min {min(times[k]):.3f}, max {max(times[k]):.3f}, n={n})")
    lib = med["import the library (what --help paid before)"]
    print(f"--help is {lib / med['erasediff --help']:.0f}x faster than importing the library")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
