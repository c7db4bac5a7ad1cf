#!/usr/bin/env bash
# Lossless decoding methods against stock vLLM, in one bench run: vLLM's n-gram speculation, vLLM's
# EAGLE with a head trained here, the self-draft without heads (the skip-set draft of SmolLM2-135M as
# downloaded: all layers but 13-19, k=2), the self-draft through the previous-state draft head and
# through the attention draft head (both over the token's embedding, k=2).
# vLLM's suffix decoding joins them when arctic-inference is installed beside vLLM (it is built as
# docs/benchmarking.md says, in an environment of its own; there only this plugin is loaded).
# float32, so that lossless means identical; batch 1, 128 new tokens.
#   usage: benchmarks/peers.sh [PROMPTS] [OUT.json]   (defaults: the code prompts, benchmarks/results/peers.json)
# The heads are trained once into the model cache (copies of the checkpoint, beside it), on
# standard-library sources (and, for the attention heads, the model's own continuations of
# standard-library function signatures): each within 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${1:-benchmarks/prompts/code.jsonl}
OUT=${2:-benchmarks/results/peers.json}
BASE=$(vllm-depth model smollm2-135m)
PREV=${PREV:-$BASE-draft-prev}
ATTN=${ATTN:-$BASE-draft-attention}
EAGLE=${EAGLE:-$BASE-eagle}
if [ ! -f "$PREV/depth/exit_heads.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --exit-layers 0 --prev-state --chunks 400 --steps 2000 --out "$PREV" \
    --json "${OUT%.json}_train_prev.json"
fi
if [ ! -f "$ATTN/depth/exit_heads.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --draft-attention --out "$ATTN" --json "${OUT%.json}_train_attention.json"
fi
if [ ! -f "$EAGLE/model.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --draft-attention --format eagle --out "$EAGLE" \
    --json "${OUT%.json}_train_eagle.json"
fi
SUFFIX=()
if "$(dirname "$(command -v vllm-depth)")/python" -c "import arctic_inference.suffix_decoding" 2>/dev/null; then
  SUFFIX=(--arm suffix)
  export VLLM_PLUGINS=${VLLM_PLUGINS:-depth}  # arctic-inference's own vLLM plugin patches every engine
fi
vllm-depth bench --model smollm2-135m --prompts "$PROMPTS" --max-tokens 128 --rounds "${ROUNDS:-2}" \
  --engine-args '{"dtype": "float32"}' \
  --arm ngram "${SUFFIX[@]}" \
  --arm "eagle={\"engine_args\": {\"speculative_config\": {\"method\": \"eagle\", \"model\": \"$EAGLE\", \"num_speculative_tokens\": 2}}}" \
  --arm self-draft \
  --arm "self-draft-prev={\"model\": \"$PREV\", \"self_spec\": {\"draft_layers\": 0, \"num_speculative_tokens\": 2}}" \
  --arm "self-draft-attention={\"model\": \"$ATTN\", \"self_spec\": {\"draft_layers\": 0, \"num_speculative_tokens\": 2}}" \
  --json "$OUT" --plot "${OUT%.json}.png"
