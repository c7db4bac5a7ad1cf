"""Where a checkpoint keeps what only the depth engine reads (vLLM 0.32 ``DefaultModelLoader``).

vLLM's loader reads a checkpoint's top-level weight files (every ``*.safetensors``, or the files
of its index, ``DefaultModelLoader._prepare_weights``), not its sub-folders.  Exit heads live in
``depth/``, so stock vLLM still loads a checkpoint that has them; the depth engine reads them itself.
"""

from __future__ import annotations

from pathlib import Path

HEADS_FILE = "depth/exit_heads.safetensors"
# an older place, beside the weights, where vLLM's loader reads them with the weights (and stock vLLM
# fails on their names): still read by the depth engine
LEGACY_HEADS_FILE = "exit_heads.safetensors"


def heads_file(model_dir: str) -> Path | None:
    """The checkpoint's heads file (or the legacy one), None when it has neither."""
    for name in (HEADS_FILE, LEGACY_HEADS_FILE):
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    return None


def heads_file_to_load(model_dir: str) -> Path | None:
    """The heads file the depth engine loads itself: None for a legacy file, which vLLM's loader
    hands over with the weights.  Raises when there is none."""
    path = heads_file(model_dir)
    if path is None:
        raise FileNotFoundError(model_dir)
    return None if path == Path(model_dir) / LEGACY_HEADS_FILE else path
