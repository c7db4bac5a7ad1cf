"""vLLM's torch.compile for graphs of the plugin's own (vLLM 0.32 ``support_torch_compile``)."""

from __future__ import annotations

import types

from vllm.compilation.backends import set_model_tag
from vllm.compilation.decorators import support_torch_compile
from vllm.config.utils import hash_factors


def compiled_class(base: type, name: str, dynamic: tuple[str, ...]) -> type:
    """A ``support_torch_compile`` subclass of ``base`` named ``name``, with a forward of its own.

    vLLM 0.32 keys its AOT compile cache by the forward's ``__qualname__`` and
    line (``_model_hash_key``): graphs must not share a key, so each class
    gets a copy of ``forward`` named after it.
    """
    fn = base.forward
    fwd = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    fwd.__qualname__ = f"{name}.forward"
    fwd.__annotations__ = dict(fn.__annotations__)
    cls = type(name, (base,), {"forward": fwd, "__module__": base.__module__})
    return support_torch_compile(dynamic_arg_dims={arg: {0: "b"} for arg in dynamic})(cls)


def build_compiled(tag: str, base: type, name: str, dynamic: tuple[str, ...], **kwargs):
    """An instance of ``compiled_class(base, name, dynamic)`` built under its own compile-cache tag
    (vLLM names caches by the tag current at construction)."""
    with set_model_tag(tag):
        return compiled_class(base, name, dynamic)(**kwargs)


def model_config_hash(model_config) -> str:
    """The key vLLM's torch.compile / AOT cache takes from a ``ModelConfig`` (it hashes ``hf_config``,
    so the ``depth`` object): ``compute_hash()`` in vLLM 0.32 and 0.33; vLLM 0.34 hashes its
    ``compile_factors()`` instead (``vllm.config.utils.hash_config``)."""
    compute_hash = getattr(model_config, "compute_hash", None)
    if compute_hash is not None:
        return compute_hash()
    return hash_factors(model_config.compile_factors())  # vLLM 0.34
