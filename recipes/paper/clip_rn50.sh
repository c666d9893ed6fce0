#!/usr/bin/env bash
# The paper's CLIP experiment: the OpenAI CLIP RN50 image embedding (1024-d, unnormalised, 224 px), tau = 3.
#   recipes/paper/clip_rn50.sh IMAGE...        or        recipes/paper/clip_rn50.sh --text "a red apple"
NETWORK=open_clip:RN50/openai TAU=3 NAME=clip_rn50 TEXT_OK=1
source "$(dirname "$0")/_run.sh"
