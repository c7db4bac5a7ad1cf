"""vLLM 0.32 ``compilation.decorators._try_load_aot_compiled_fn``: a depth model's compiled graphs
load from the AOT compile cache on a second start instead of compiling again.

On the CPU build, the cached artifact's ``compiled_fn`` is torch's
``BundledAOTAutogradSerializableCallable``, which is loaded and ready as it is, while vLLM's loader
calls ``finalize_loading`` on it (a method of its own ``VllmSerializableFunction``): every warm
start logs "Compiling model again due to a load failure ... 'function' object has no attribute
'finalize_loading'" and compiles again, stock vLLM included.  For the depth model's graphs (the
full-depth graph and the segments between exit points) the wrapper gives that callable a no-op
``finalize_loading`` while vLLM loads it; every other graph takes vLLM's path unchanged.
"""

from __future__ import annotations

from vllm.compilation import decorators

from vllm_depth.patches.base import patch

try:  # the artifact type of torch's AOT compile (torch >= 2.10)
    from torch._dynamo.aot_compile_types import (
        BundledAOTAutogradSerializableCallable as _Loaded,
    )
except ImportError:  # another torch: vLLM's path, unchanged
    _Loaded = None

PACKAGE = __name__.split(".")[0]


def _loaded_as_is(self, vllm_config) -> None:
    """torch's deserialized callable needs no finalizing."""


def is_depth_graph(module) -> bool:
    return type(module).__module__.split(".")[0] == PACKAGE


def install() -> None:
    if _Loaded is None:
        return

    def wrap(original):
        def load(model, aot_compilation_path):
            if not is_depth_graph(model) or hasattr(_Loaded, "finalize_loading"):
                return original(model, aot_compilation_path)
            _Loaded.finalize_loading = _loaded_as_is
            try:
                return original(model, aot_compilation_path)
            finally:
                del _Loaded.finalize_loading

        return load

    patch(decorators, "_try_load_aot_compiled_fn", wrap)
