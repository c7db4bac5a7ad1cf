"""Token-level early exit: criteria, the step and its bookkeeping, the KV fill, the exit-check kernels."""
