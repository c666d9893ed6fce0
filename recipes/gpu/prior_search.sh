#!/usr/bin/env bash
# Issue 10 on a lent GPU, in one call: train stronger Fashion-MNIST priors, then decode the preset grid on each.
#
#   OUT=runs/gpu bash recipes/gpu/prior_search.sh          # on the device: ~9 min, three files under $OUT
#
# Two trainings share the GPU (a 32x32 UNet is launch-bound, so they barely slow each other):
#   A  the shipped 2.7M-parameter fashion-ddpm, continued from its own weights at batch 512;
#   B  a 6.1M-parameter UNet (widths 48/96/192) from scratch.
# Meanwhile the `paper` schedule decodes N_PAPER targets with the shipped prior (12,960 rounds: the slow one).
# Then benchmarks/preset_search.py decodes the same held-out targets with each new prior; score the images
# on any machine with benchmarks/preset_score.py (--prior pointing at the matching exported folder).
# Outputs: $OUT/prior-A.tar, $OUT/prior-B.tar.a? (exported diffusers folders + loss logs; cat the parts), $OUT/search.tar (npz per config), $OUT/log.txt.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
W=${WORK:-/tmp/probe-gpu}
mkdir -p "$W"
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-4.2}
SEARCH_S=${SEARCH_S:-215}
PAPER_S=${PAPER_S:-510}
N=${N:-100}
N_PAPER=${N_PAPER:-50}
CONFIGS_A=${CONFIGS_A:-"balanced;balanced:weight=0.25;balanced:weight=1;fast;fast:weight=0.25;none"}
CONFIGS_B=${CONFIGS_B:-"balanced;balanced:weight=0.25;none"}
PAPER=${PAPER:-paper}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
exec > >(tee "$OUT/log.txt") 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.is_available())"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp "train A, train B, paper search"
python recipes/train_ddpm.py --dataset fashion --name fashion-ddpm-cont --init-from probe/bundled/fashion-ddpm \
  --batch-size 512 --lr 2e-4 --warmup 200 --device "$DEVICE" --max-minutes "$TRAIN_MIN" --ckpt-every 2000 \
  --out "$W/fashion-ddpm-cont" > "$W/train-A.log" 2>&1 &
PA=$!
python recipes/train_ddpm.py --dataset fashion --name fashion-ddpm-6m --widths 48,96,192 \
  --batch-size 256 --lr 4e-4 --device "$DEVICE" --max-minutes "$TRAIN_MIN" --ckpt-every 2000 \
  --out "$W/fashion-ddpm-6m" > "$W/train-B.log" 2>&1 &
PB=$!
timeout "$PAPER_S" python benchmarks/preset_search.py --device "$DEVICE" --n "$N_PAPER" --configs "$PAPER" \
  --out "$W/search-paper" > "$W/search-paper.log" 2>&1 &
PP=$!
wait $PA $PB
stamp "trained"; tail -n 3 "$W"/train-*.log
for p in fashion-ddpm-cont fashion-ddpm-6m; do cp ~/.cache/probe/train/$p/log.csv "$W/$p/loss.csv" 2>/dev/null; done
# at most 16 MiB a file comes back from a lent machine: one tar per prior, split where larger
tar -C "$W" -cf "$OUT/prior-A.tar" fashion-ddpm-cont train-A.log
tar -C "$W" -cf "$W/prior-B.tar" fashion-ddpm-6m train-B.log && split -b 15m "$W/prior-B.tar" "$OUT/prior-B.tar."
stamp "search A and B"
timeout "$SEARCH_S" python benchmarks/preset_search.py --device "$DEVICE" --n "$N" --prior "$W/fashion-ddpm-cont" \
  --configs "$CONFIGS_A" --workers 6 --out "$W/search-A" > "$W/search-A.log" 2>&1 &
SA=$!
timeout "$SEARCH_S" python benchmarks/preset_search.py --device "$DEVICE" --n "$N" --prior "$W/fashion-ddpm-6m" \
  --configs "$CONFIGS_B" --workers 3 --out "$W/search-B" > "$W/search-B.log" 2>&1 &
SB=$!
wait $SA $SB
stamp "searched"
wait $PP
stamp "paper done (rc $?)"
tail -n 4 "$W"/search-*.log
tar -C "$W" -cf "$OUT/search.tar" search-A search-B search-paper search-A.log search-B.log search-paper.log 2>/dev/null
ls -la "$OUT"
