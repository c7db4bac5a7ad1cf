"""Adapters over vLLM internals, one module per area; each names the vLLM function it relies on.
``audit``, ``entries`` and ``notes`` are the audit of those internals across vLLM releases
(``python -m vllm_depth.compat.audit``), which imports neither vLLM nor torch."""
