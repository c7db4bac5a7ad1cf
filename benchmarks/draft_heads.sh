#!/usr/bin/env bash
# Self-drafting through a draft head that reads the previous token's final state:
# SmolLM2-135M, bf16, batch 1, the 8 held-out code prompts, 128 new tokens.  Results: benchmarks/results/
#   1. train-exits --prev-state: heads at 0 (the token's embedding) and 2 layers, into a copy of the checkpoint
#   2. bench the draft over the embedding (no layer runs) at k = 1 and 2 against stock vLLM, side by side
#      (ROUNDS=4 timed rounds each, in ABBA order, into self_spec_prev0_k*_r4.json)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
CKPT=${CKPT:-out/smollm2-draft}
if [ ! -f "$CKPT/depth/exit_heads.safetensors" ]; then
  vllm-depth train-exits smollm2-135m --exit-layers 0,2 --prev-state --chunks 400 --steps 2000 --out "$CKPT" \
    --json $OUT/train_draft_heads.json
fi
for k in ${KS:-1 2}; do
  vllm-depth bench --model "$CKPT" --prompts benchmarks/prompts/code.jsonl --max-tokens 128 --rounds "${ROUNDS:-4}" \
    --self-spec "{\"draft_layers\": ${LAYERS:-0}, \"num_speculative_tokens\": $k}" --json "$OUT/self_spec_prev${LAYERS:-0}_k${k}_r${ROUNDS:-4}.json"
done
