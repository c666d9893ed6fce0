#!/usr/bin/env bash
# The paper's ResNet-50 experiment: torchvision ResNet-50 IMAGENET1K_V1, the 2048-d input of fc, tau = 3.
#   recipes/paper/resnet50.sh IMAGE...
NETWORK=torchvision:resnet50/IMAGENET1K_V1 TAU=3 NAME=resnet50
source "$(dirname "$0")/_run.sh"
