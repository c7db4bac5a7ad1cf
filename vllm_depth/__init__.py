"""vllm-depth: depth-adaptive decoding for vLLM.

Importing this package is cheap (it does not import vLLM or torch).  vLLM
calls :func:`register` through the ``vllm.general_plugins`` entry point in
every process it starts.
"""

__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Register the depth model classes and vLLM adaptations (idempotent)."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    from vllm_depth import vllm_compat
    from vllm_depth.models.families import SUPPORTED_ARCHITECTURES

    known = set(ModelRegistry.get_supported_archs())
    for arch in SUPPORTED_ARCHITECTURES:
        name = vllm_compat.depth_arch(arch)
        if name not in known:
            ModelRegistry.register_model(name, "vllm_depth.models.decoder:DepthForCausalLM")
    vllm_compat.install()
    _registered = True


def __getattr__(name: str):
    # ``speculative_config={"model": "vllm_depth.SelfDraft"}``: vLLM imports the
    # proposer by this path in the worker; loaded only then.
    if name == "SelfDraft":
        from vllm_depth.drafting import SelfDraft

        return SelfDraft
    raise AttributeError(f"module 'vllm_depth' has no attribute {name!r}")
