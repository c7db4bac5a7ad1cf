"""Self-speculative decoding: drafts from the model's own layers, verified by the full model."""
