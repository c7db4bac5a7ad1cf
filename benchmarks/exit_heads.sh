#!/usr/bin/env bash
# Exit heads and calibrated early exit on SmolLM2-135M.  Results: benchmarks/results/
#   1. train-exits at default settings into a copy of the checkpoint (timed; the script prints how long it took)
#   2. calibrate its thresholds on 128 standard-library prompts (target 0.9, delta 0.1)
#   3. bench the calibrated checkpoint (no --depth: its own config) against stock vLLM on the held-out
#      code prompts, batch 1, 64 new tokens
# Calibration and bench run in fp32: in bf16 the early-exit steps (compiled segments) round differently
# from the full-depth graph, and this 135M model's greedy output drifts from that alone (README, early exit).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
CKPT=${CKPT:-out/smollm2-exits}
if [ ! -f "$CKPT/depth/exit_heads.safetensors" ]; then
  start=$(date +%s)
  vllm-depth train-exits smollm2-135m --exit-layers 8,12,16,20,24 --out "$CKPT" --json $OUT/train_exits.json
  echo "train-exits took $(( $(date +%s) - start )) s"
fi
vllm-depth calibrate "$CKPT" --prompts benchmarks/prompts/calib_stdlib.jsonl --target-agreement 0.9 --delta 0.1 \
  --min-layers "${MIN_LAYERS:-16,20,24}" --full-curve --engine-args '{"dtype": "float32"}' --json $OUT/calibrate_target0.9.json --plot $OUT/calibrate_target0.9.png || true
vllm-depth bench --model "$CKPT" --baseline-model smollm2-135m --prompts benchmarks/prompts/code.jsonl \
  --max-tokens 64 --engine-args '{"dtype": "float32"}' --json $OUT/calibrated_b1.json
