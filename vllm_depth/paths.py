"""Where vllm-depth keeps what it builds: checkpoints of the model aliases and native kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VDEPTH_CACHE``, else ``$XDG_CACHE_HOME/vllm-depth`` (``~/.cache/vllm-depth``)."""
    root = os.environ.get("VDEPTH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vllm-depth"
    )
    return Path(root)
