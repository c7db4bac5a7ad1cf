"""The scheduler vLLM is given for a depth engine."""
