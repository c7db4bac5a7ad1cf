#!/usr/bin/env bash
# Lossless decoding methods against stock vLLM, in one bench run: vLLM's n-gram speculation, the
# self-draft without heads (the skip-set draft of SmolLM2-135M as downloaded: all layers but 13-19,
# k=2) and the self-draft through the previous-state draft head (over the token's embedding, k=2).
# float32, so that lossless means identical; batch 1, 128 new tokens.
#   usage: benchmarks/peers.sh [PROMPTS] [OUT.json]   (defaults: the code prompts, benchmarks/results/peers.json)
# The head is trained once into the model cache (a copy of the checkpoint, beside it), on
# standard-library sources: about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${1:-benchmarks/prompts/code.jsonl}
OUT=${2:-benchmarks/results/peers.json}
BASE=$(vllm-depth model smollm2-135m)
PREV=${PREV:-$BASE-draft-prev}
if [ ! -f "$PREV/depth/exit_heads.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --exit-layers 0 --prev-state --chunks 400 --steps 2000 --out "$PREV" \
    --json "${OUT%.json}_train_prev.json"
fi
vllm-depth bench --model smollm2-135m --prompts "$PROMPTS" --max-tokens 128 --rounds "${ROUNDS:-2}" \
  --engine-args '{"dtype": "float32"}' \
  --arm ngram --arm self-draft \
  --arm "self-draft-prev={\"model\": \"$PREV\", \"self_spec\": {\"draft_layers\": 0, \"num_speculative_tokens\": 2}}" \
  --json "$OUT" --plot "${OUT%.json}.png"
