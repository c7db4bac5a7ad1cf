"""Front ends over vLLM's own servers."""
