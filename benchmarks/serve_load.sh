#!/usr/bin/env bash
# Served speed at every load, with vLLM's own client (vllm bench serve): stock vllm serve beside the
# self-draft through the attention draft head and a server whose decode tokens all exit at layer 15,
# at concurrency 1 to 32, each level in mirrored order.  fp32, 128 output tokens, the code prompts.
#   usage: benchmarks/serve_load.sh [PROMPTS.jsonl] [OUT.json]
# The attention draft head is trained once into the model cache (about 13 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${1:-benchmarks/prompts/code.jsonl}
OUT=${2:-benchmarks/results/serve_load.json}
BASE=$(vllm-depth model smollm2-135m)
ATTN=${ATTN:-$BASE-draft-attention}
if [ ! -f "$ATTN/depth/exit_heads.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --draft-attention --out "$ATTN" --json "${OUT%.json}_train_attention.json"
fi
PY="$(dirname "$(command -v vllm-depth)")/python"
"$PY" benchmarks/serve_load.py --prompts "$PROMPTS" --out "$OUT" \
  --server "self-draft=$ATTN" --server early-exit --concurrency "${CONCURRENCY:-1,2,4,8,16,32}"
