#!/usr/bin/env bash
# The depth engine against stock vLLM on a GPU: identity, forced exit at 15, a mixed batch and a
# self-draft, on the tiny model and SmolLM2-135M; one table, exit status 1 on any mismatch.
# Needs a CUDA build of vLLM (pip install ".[gpu]") and about 8 minutes.
#   bash benchmarks/gpu/check.sh               # on the GPU
#   bash benchmarks/gpu/check.sh --device cpu  # a dry run on vLLM's CPU backend
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu/check.py "$@"
