#!/usr/bin/env bash
# The paper's ViT experiment: torchvision ViT-H/14 IMAGENET1K_SWAG_E2E_V1 at 518 px, the 1280-d class
# token before the head, tau = 2.
#   recipes/paper/vit_h14.sh IMAGE...
NETWORK=torchvision:vit_h_14/IMAGENET1K_SWAG_E2E_V1 TAU=2 NAME=vit_h14
source "$(dirname "$0")/_run.sh"
