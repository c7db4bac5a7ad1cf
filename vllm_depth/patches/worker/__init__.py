"""The patches of vLLM's worker-side classes."""
