#!/usr/bin/env bash
# The depth engine against stock vLLM on a GPU: identity, forced exit at 15, a mixed batch and a
# self-draft, on the tiny model and SmolLM2-135M; one table, exit status 1 on any mismatch.
# Needs a CUDA build of vLLM 0.32 or 0.33 (pip install ".[gpu]" "vllm<0.34": exits and the self-draft
# run through vLLM's V1 model runner, which 0.34 removed) and about 8 minutes.
#   bash benchmarks/gpu/check.sh               # on the GPU
#   bash benchmarks/gpu/check.sh --device cpu  # a dry run on vLLM's CPU backend
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu/check.py "$@"
