#!/usr/bin/env bash
# Issue 25 item 3 on a lent GPU, in one call: a stronger emoji prior, measured and ready to ship.
#
#   OUT=runs/gpu bash recipes/gpu/emoji_prior.sh           # on the device: ~9-10 min, files under $OUT
#   DEVICE=cpu TRAIN_MIN=0.3 N=64 POOL=64 OUT=/tmp/e bash recipes/gpu/emoji_prior.sh   # a dry run here
#
# Two trainings share the GPU (a 32x32 UNet is launch-bound, so they barely slow each other):
#   A  the shipped 2.7M-parameter emoji-ddpm continued from its own weights at batch 512, the rate annealed
#      (cosine to 0 over the training minutes): it saw 10,148 steps at a constant rate;
#   B  a 6.1M-parameter UNet (widths 48/96/192) from scratch at batch 256, the same cosine.
# Each export's Frechet distance to the held-out emoji (benchmarks/prior_quality.py: N samples, 50 steps, Lite0
# features; the shipped prior scores 81.6, training vs held-out 39.0) is measured beside the shipped prior's on
# the same device, and the lower one is copied over probe/bundled/emoji-ddpm (on the device's copy only) and
# its seed pool drawn (recipes/seed_pool.py), so $OUT/emoji-ddpm.tar is a drop-in folder. Ship it only after
# the CPU benchmarks (emoji_fidelity.py, walk_quality.py, decode_speed.py) measure it better; a larger UNet
# also costs CPU users time per decode.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
W=${WORK:-/tmp/probe-gpu-emoji}
mkdir -p "$W"
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-6.5}
N=${N:-1000}
POOL=${POOL:-2048}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec > >(tee "$OUT/log.txt") 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.is_available())"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp "train A and B"
python recipes/train_ddpm.py --dataset emoji --name emoji-ddpm-anneal-gpu --init-from probe/bundled/emoji-ddpm \
  --batch-size 512 --lr 2e-4 --warmup 200 --lr-schedule cosine-time --max-steps 100000 --device "$DEVICE" \
  --max-minutes "$TRAIN_MIN" --ckpt-every 2000 --out "$W/emoji-ddpm-A" > "$W/train-A.log" 2>&1 &
PA=$!
python recipes/train_ddpm.py --dataset emoji --name emoji-ddpm-6m --widths 48,96,192 \
  --batch-size 256 --lr 4e-4 --lr-schedule cosine-time --max-steps 100000 --device "$DEVICE" \
  --max-minutes "$TRAIN_MIN" --ckpt-every 2000 --out "$W/emoji-ddpm-B" > "$W/train-B.log" 2>&1 &
PB=$!
wait $PA $PB
stamp "trained"; tail -n 2 "$W"/train-*.log
for p in A B; do cp "$W/train-$p.log" "$W/emoji-ddpm-$p/"; done
cp ~/.cache/probe/train/emoji-ddpm-anneal-gpu/log.csv "$W/emoji-ddpm-A/loss.csv" 2>/dev/null
cp ~/.cache/probe/train/emoji-ddpm-6m/log.csv "$W/emoji-ddpm-B/loss.csv" 2>/dev/null

stamp "Frechet distance of the shipped prior, A and B ($N samples each)"
fd() {  # fd NAME PRIOR: prior_quality's JSON into $OUT, the distance on stdout
  python benchmarks/prior_quality.py --prior "$2" --data emoji -n "$N" --steps 50 --no-speed \
    --out "$OUT/prior_quality_$1.json" --grid "$OUT/samples_$1.png" > "$W/fd-$1.log" 2>&1
  python -c "import json; print(json.load(open('$OUT/prior_quality_$1.json'))['frechet_samples_vs_heldout'])"
}
FD0=$(fd shipped bundled:emoji-ddpm); FDA=$(fd A "$W/emoji-ddpm-A"); FDB=$(fd B "$W/emoji-ddpm-B")
stamp "FD shipped $FD0, A $FDA, B $FDB"
BEST=$(python -c "print(min([('shipped', $FD0), ('A', $FDA), ('B', $FDB)], key=lambda r: r[1])[0])")
if [ "$BEST" = shipped ]; then
  stamp "neither candidate beats the shipped prior: nothing to ship"
else
  stamp "candidate $BEST: into probe/bundled/emoji-ddpm (this copy), seed pool of $POOL"
  cp -r "$W/emoji-ddpm-$BEST/unet" "$W/emoji-ddpm-$BEST/training.json" probe/bundled/emoji-ddpm/
  python recipes/seed_pool.py --prior bundled:emoji-ddpm --n "$POOL" --device "$DEVICE" | tail -n 1
  # at most 16 MiB a file comes back from a lent machine: split where larger
  tar -C probe/bundled -cf "$W/emoji-ddpm.tar" emoji-ddpm && split -b 15m "$W/emoji-ddpm.tar" "$OUT/emoji-ddpm.tar."
fi
for p in A B; do tar -C "$W" -cf "$W/candidate-$p.tar" "emoji-ddpm-$p" && split -b 15m "$W/candidate-$p.tar" "$OUT/candidate-$p.tar."; done
stamp "done"
ls -la "$OUT"
