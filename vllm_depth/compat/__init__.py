"""Adapters over vLLM internals, one module per area; each names the vLLM function it relies on."""
