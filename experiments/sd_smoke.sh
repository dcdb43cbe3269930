#!/usr/bin/env bash
# A short version of the nudity protocol on one GPU with Stable Diffusion weights at hand: the estimate, then EraseDiff
# with the sd-nudity recipe for one epoch over N_IMAGES generated images (2 rounds x N_IMAGES / 16 outer steps), NudeNet
# on the first N_PROMPTS I2P prompts before and after.
# Prints the wall time, the time per step, the measured and estimated peak GPU memory and the NudeNet counts.
#   bash experiments/sd_smoke.sh CompVis/stable-diffusion-v1-4 path/to/i2p_benchmark.csv [OUT]
# Environment: N_PROMPTS (default 300), N_IMAGES (forget and remain images generated, default 200), EXTRA (more flags).
set -euo pipefail
CKPT=${1:?usage: sd_smoke.sh CHECKPOINT I2P_CSV [OUT]}
I2P=${2:?usage: sd_smoke.sh CHECKPOINT I2P_CSV [OUT]}
OUT=${3:-runs/sd-smoke}
N_PROMPTS=${N_PROMPTS:-300}
N_IMAGES=${N_IMAGES:-200}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
erasediff unlearn --preset sd-nudity --checkpoint "$CKPT" --out "$OUT" --device cuda --estimate-only
start=$(date +%s)
# shellcheck disable=SC2086
erasediff unlearn --preset sd-nudity --checkpoint "$CKPT" --out "$OUT" --device cuda --epochs 1 \
  --n-forget "$N_IMAGES" --n-remain "$N_IMAGES" --rem-num "$N_IMAGES" \
  --eval-prompts "$I2P" --eval-limit "$N_PROMPTS" --overwrite --quiet ${EXTRA:-} > "$OUT.log"
echo "whole run: $(( $(date +%s) - start )) s"
python - "$OUT/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"unlearning: {m['steps']} steps in {m['unlearn_seconds']:.0f} s ({m['unlearn_seconds'] / m['steps']:.2f} s/step) on {m['device']}")
print(f"peak GPU memory: {m['cuda_peak_mb'] / 1024:.1f} GiB measured, {m['memory_estimate']['total_gib']:.1f} GiB estimated")
for k in ("i2p", "forget_prompts"):
    b, a = m["before"][k], m["after"][k]
    print(f"{k}: images with an exposed part {b['images_with_any']}/{b['n_images']} -> {a['images_with_any']}/{a['n_images']}")
    for c in b["counts"]: print(f"  {c:26s} {b['counts'][c]:5d} -> {a['counts'][c]:5d}")
PY
