#!/usr/bin/env bash
# Issue 12's GPU figures in one call (an H200/H100 with jax[cuda], flax, optax, orbax;
# no TensorFlow needed): ResNet-34 and ResNet-50 in bf16, the engine's train step on
# ImageNet-shaped data already on the device, at the largest batch of the list that fits.
# Results land in ${OUT:-/tmp/gpu_issue12}. (bench.bench_engine_vs_hand needs clu and
# ml-collections, which that machine lacks.)
#
#   bash bench/gpu_issue12.sh
set -u
out="${OUT:-/tmp/gpu_issue12}"
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-$PWD}"
for model in resnet34 resnet50; do
  for batch in 1024 512 256 128; do
    if timeout 240 python -m bench.bench_train --mode=device --model="$model" --batch="$batch" \
      --dtype=bfloat16 --steps=50 --warmup=5 >"$out/$model-b$batch.json" 2>"$out/$model-b$batch.err"; then
      echo "$model batch $batch: $(tail -1 "$out/$model-b$batch.json")"
      break  # the largest batch that fits
    fi
    echo "$model batch $batch: failed (see $out/$model-b$batch.err)"
  done
done
