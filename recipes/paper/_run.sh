#!/usr/bin/env bash
# Shared body of the three paper recipes (sourced by clip_rn50.sh, resnet50.sh, vit_h14.sh): decode the
# feature of one image (or, for CLIP, a text prompt) with Stable Diffusion v1.4 and the paper's exact
# schedule. Needs hub access (SD v1.4 from the Hugging Face hub, the network's weights from its hub) and,
# in practice, a GPU: 12,960 guided evaluations per image (benchmarks/sd_cost.py measures the cost).
# Offline, the first model that cannot be fetched ends the run with one line and exit status 3.
#
# Environment: SAMPLES (decoded images per target, default 1), SEED (default 0), OUT (output folder),
#   SCHEDULE (default paper; e.g. balanced for a 20x cheaper run), PRIOR (default CompVis/stable-diffusion-v1-4),
#   EXTRA (more `probe decode` options, e.g. "--device cuda:1").
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 IMAGE [more IMAGEs...]${TEXT_OK:+  |  $0 --text \"a prompt\"}" >&2
  exit 2
fi
PROBE=${PROBE:-probe}
targets=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--text" ] && [ -n "${TEXT_OK:-}" ] && [ $# -ge 2 ]; then
    targets+=(--text "$2"); shift 2
  else
    targets+=(--image "$1"); shift
  fi
done
# shellcheck disable=SC2086
exec $PROBE decode "${targets[@]}" -m "$NETWORK" --prior "${PRIOR:-CompVis/stable-diffusion-v1-4}" \
  --schedule "${SCHEDULE:-paper}" --tau "$TAU" --samples "${SAMPLES:-1}" --seed "${SEED:-0}" \
  --batch-size 1 --out "${OUT:-runs/paper-$NAME}" ${EXTRA:-}
