#!/usr/bin/env bash
# Superseded by bench/gpu_bench.sh (issue 22): ResNet-34 and ResNet-50 in bf16 at the paper's
# batch on one GPU, device-resident and host (TFDS-shaped) input, images/s and MFU, in one call.
#
#   bash bench/gpu_issue12.sh
exec bash "$(dirname "$0")/gpu_bench.sh" "$@"
