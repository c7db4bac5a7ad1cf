#!/usr/bin/env bash
# Early exit on SmolLM2-135M: held-out prompts, 64 new tokens, stock vLLM and the
# depth engine side by side in each run (alternating rounds).  Results: benchmarks/results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
B="vllm-depth bench --model smollm2-135m --max-tokens 64 --rounds 2"
# 1. every token exits at layer 15 of 30 (propagate), batch 1
$B --prompts benchmarks/prompts/mixed.jsonl --depth '{"exit_layers": [15], "exit_threshold": 0.0}' --json $OUT/exit15_b1.json
# 2. a threshold that cannot fire: no check runs, output identical
$B --prompts benchmarks/prompts/mixed.jsonl --depth '{"exit_layers": [15], "exit_threshold": 1.0}' --json $OUT/never_b1.json
# 3. the forced exit at batch 16
$B --prompts benchmarks/prompts/batch16.jsonl --batch-size 16 --depth '{"exit_layers": [15], "exit_threshold": 0.0}' --json $OUT/exit15_b16.json
# 4. token-level compaction: half the requests exit at 15, half run full depth (per-prompt extra_args)
$B --prompts benchmarks/prompts/batch16_half_exit.jsonl --batch-size 16 --depth '{"exit_layers": [15]}' --json $OUT/half_b16.json
# 5. speed / agreement curve of the softmax threshold
$B --prompts benchmarks/prompts/mixed.jsonl --depth '{"exit_layers": [8, 12, 16, 20, 24]}' \
   --sweep exit_threshold=0.2,0.4,0.6,0.8,0.9,0.95 --json $OUT/sweep_b1.json --plot $OUT/sweep_b1.png
# 6. kv_fill "recompute": the forced exit at 15, exited tokens re-run at full depth in the next step
$B --prompts benchmarks/prompts/mixed.jsonl --depth '{"exit_layers": [15], "exit_threshold": 0.0, "kv_fill": "recompute"}' --json $OUT/exit15_recompute_b1.json
# 7. the two fills at one checked threshold, in fp32 (bf16 segments round differently on their own):
#    speed and token agreement with stock
for fill in propagate recompute; do
  $B --prompts benchmarks/prompts/mixed.jsonl --engine-args '{"dtype": "float32"}' \
     --depth "{\"exit_layers\": [8, 12, 16, 20, 24], \"exit_threshold\": 0.8, \"kv_fill\": \"$fill\"}" --json $OUT/softmax08_${fill}_fp32_b1.json
done
