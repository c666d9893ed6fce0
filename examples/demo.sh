#!/usr/bin/env bash
# The main job on the bundled default models, offline, on a CPU:
#   1. extract fashion-cnn features of the example images (HDF5, resumable)
#   2. decode two of those features with the bundled Fashion-MNIST prior (4 samples each)
#   3. ask which attributes persist across the decoded samples
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
mkdir -p "$OUT"
probe extract examples/fashion -o "$OUT/features.h5" --labels parent
probe info "$OUT/features.h5"
probe decode --from "$OUT/features.h5" --index 0,10 --samples 4 --out "$OUT/decoded"
probe compare "$OUT/decoded" --json > "$OUT/compare.json"
probe compare "$OUT/decoded" --html "$OUT/report.html"
echo "done: $OUT/decoded/contact_sheet.png, $OUT/report.html"
