#!/usr/bin/env bash
# Self-drafting on SmolLM2-135M as downloaded (no exit heads), with the draft
# tune-draft finds; bf16, batch 1, the 8 held-out code prompts, 128 new tokens.  Results: benchmarks/results/
#   1. tune-draft --dry-run: acceptance of prefix and skip-set drafts, the best three (draft, k) timed
#      against stock (nothing is written into the cached checkpoint)
#   2. the bench of its pick, twice, 4 timed rounds each in ABBA order
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
vllm-depth tune-draft smollm2-135m --prompts benchmarks/prompts/code.jsonl --k-max 3 --max-tokens 128 --top 3 \
  --dry-run --json $OUT/tune_draft_nohead.json --plot $OUT/tune_draft_nohead.png
SPEC=$(python -c "
import json; b = json.load(open('$OUT/tune_draft_nohead.json'))['best']
key = 'draft_layers' if 'draft_layers' in b else 'draft_schedule'
print(json.dumps({key: b[key], 'num_speculative_tokens': b['k']}))")
for run in a b; do
  vllm-depth bench --model smollm2-135m --prompts benchmarks/prompts/code.jsonl --max-tokens 128 --rounds 4 \
    --self-spec "$SPEC" --json "$OUT/self_spec_nohead_pick_r4$run.json"
done
