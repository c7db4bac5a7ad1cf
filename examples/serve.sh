#!/usr/bin/env bash
# Serve SmolLM2-135M without 6 of its 30 layers through the depth path, then ask it something.
set -euo pipefail
MODEL=$(vllm-depth model smollm2-135m)
SCHEDULE='[0,1,2,3,4,5,6,7,8,9,10,11,18,19,20,21,22,23,24,25,26,27,28,29]'
vllm serve "$MODEL" --model-impl depth --hf-overrides "{\"depth\": {\"layer_schedule\": $SCHEDULE}}" \
    --host 127.0.0.1 --port 8000 --gpu-memory-utilization 0.3 --dtype float32 &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf 127.0.0.1:8000/health >/dev/null; do sleep 2; done
curl -s 127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d "{
  \"model\": \"$MODEL\", \"max_tokens\": 32, \"temperature\": 0,
  \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}"
echo
