"""vllm-depth: depth-adaptive decoding for vLLM.

Importing this package is cheap (it does not import vLLM or torch).  vLLM
calls :func:`register` through the ``vllm.general_plugins`` entry point in
every process it starts.
"""

__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Register the depth model classes and install the patches (idempotent)."""
    global _registered
    if _registered:
        return
    # vLLM and the patches load only when vLLM loads the plugin: importing the package stays cheap
    from vllm import ModelRegistry

    from vllm_depth import (
        patches,  # vLLM's plugin loader calls this in every vLLM process
    )
    from vllm_depth.models.families import (  # with vLLM, as above
        SUPPORTED_ARCHITECTURES,
        depth_arch,
    )

    known = set(ModelRegistry.get_supported_archs())
    for arch in SUPPORTED_ARCHITECTURES:
        name = depth_arch(arch)
        if name not in known:
            ModelRegistry.register_model(name, "vllm_depth.models.decoder:DepthForCausalLM")
    patches.install()
    _registered = True


def __getattr__(name: str):
    # ``speculative_config={"model": "vllm_depth.SelfDraft"}``: vLLM imports the proposer by this
    # path in the worker; loaded only then
    if name == "SelfDraft":
        from vllm_depth.spec_decode.self_draft import (
            SelfDraft,  # the worker's import of the proposer
        )

        return SelfDraft
    raise AttributeError(f"module 'vllm_depth' has no attribute {name!r}")
