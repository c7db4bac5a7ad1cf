"""vLLM 0.32 ``EngineArgs.create_engine_config``: the depth engine's settings, decided and checked
while the engine config is built, before any process starts.

- a self-draft that cannot run is refused, and so are token-level exits, where vLLM has no V1 model
  runner (vLLM 0.34: ``compat.runner.has_v1_runner``);
- the depth config is checked against the parallel layout;
- kv_fill 'recompute' runs without async scheduling;
- early exit with prefix caching runs with the depth scheduler (exited K/V stays private);
- the CUDA-graph mode (``compat.cudagraph.cudagraph_policy``), with one start-up log line;
- the depth scheduler, when the user asked for no scheduler class of their own (chosen after vLLM
  has settled ``async_scheduling``).
"""

from __future__ import annotations

import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import init_logger

from vllm_depth.compat.cudagraph import cudagraph_policy
from vllm_depth.compat.runner import has_v1_runner
from vllm_depth.config import (
    PROPOSER,
    PROPOSER_PATHS,
    DepthConfigError,
    check_parallel,
    depth_config_of,
    is_self_draft,
    require_draft,
)
from vllm_depth.patches.base import is_depth, patch

logger = init_logger(__name__)
SCHEDULERS = "vllm_depth.core.scheduler"


def check_v1_runner(speculative_config: dict | None) -> None:
    """Refuse the self-draft, before vLLM reads its ``speculative_config``, where vLLM has no V1 model
    runner: vLLM 0.34 takes ``model`` for a draft checkpoint to load, having no ``custom_class`` proposers."""
    self_draft = isinstance(speculative_config, dict) and speculative_config.get("model") in PROPOSER_PATHS
    if self_draft and not has_v1_runner():
        raise ValueError(f"speculative_config.model={PROPOSER!r} drafts through vLLM's V1 model runner and its "
                         f"custom_class proposers, which vLLM {vllm.__version__} does not have; allowed: "
                         f"vllm>=0.32,<0.34")


def check_self_draft(config) -> None:
    """Refuse a self-draft that cannot run."""
    if not is_depth(config.model_config):
        raise ValueError(f"speculative_config.model={PROPOSER!r} drafts from the depth model; "
                         f"allowed: with model_impl='depth' (got {config.model_config.model_impl!r})")
    require_draft(depth_config_of(config.model_config.hf_config))


def sync_for_recompute(config, depth, asked_async) -> None:
    """kv_fill 'recompute' re-schedules an exited token in the step after its exit, which the
    scheduler knows only once that step's output is in: no async scheduling (vLLM 0.32 schedules
    step t+1 before step t's output), and the depth scheduler (``DepthScheduler``)."""
    if not depth.recomputes():
        return
    sc = config.scheduler_config
    if asked_async:
        raise DepthConfigError("depth.kv_fill 'recompute' needs the step's exits before the next step is "
                               "scheduled; allowed: async_scheduling=False (or unset), or kv_fill 'propagate'")
    if sc.scheduler_cls is not None:
        raise DepthConfigError(f"depth.kv_fill 'recompute' is carried out by vllm-depth's scheduler; allowed: "
                               f"scheduler_cls unset (got {sc.scheduler_cls!r}), or kv_fill 'propagate'")
    if sc.async_scheduling:
        logger.info("vllm-depth: kv_fill 'recompute' runs with async scheduling off")
        sc.async_scheduling = False


def private_exit_blocks(config, depth) -> None:
    """With prefix caching on, the depth scheduler keeps the blocks of exiting requests private
    (``DepthScheduler.add_request``): a scheduler of the user's own would let them leak."""
    sc = config.scheduler_config
    exits = depth.exit_layers is not None and config.speculative_config is None
    if exits and config.cache_config.enable_prefix_caching and sc.scheduler_cls is not None:
        raise DepthConfigError(f"depth.exit_layers with prefix caching needs vllm-depth's scheduler, which keeps "
                               f"the K/V of exited tokens out of other requests' cache hits; allowed: "
                               f"scheduler_cls unset (got {sc.scheduler_cls!r}), or enable_prefix_caching=False")


def apply_cudagraph_policy(config, depth) -> None:
    """``cudagraph_policy`` on the engine config, with one start-up log line."""
    cc = config.compilation_config
    exits = depth.exit_layers is not None and config.speculative_config is None
    self_draft = is_self_draft(config.speculative_config)
    if not (exits or self_draft):
        return
    mode, reason = cudagraph_policy(cc.cudagraph_mode, exits=exits, self_draft=self_draft)
    cc.cudagraph_mode = mode
    logger.info("vllm-depth: cudagraph_mode %s", reason)


def configure(config, asked_async) -> None:
    """The depth engine's settings on a built engine config."""
    if is_self_draft(config.speculative_config):
        check_self_draft(config)
    if not is_depth(config.model_config):
        return
    pc, hf = config.parallel_config, config.model_config.hf_config
    depth = depth_config_of(hf)
    if depth.exit_layers is not None and not has_v1_runner():
        raise DepthConfigError(f"depth.exit_layers: token-level early exit is handed each step by vLLM's V1 model "
                               f"runner, which vLLM {vllm.__version__} does not have; allowed: no exit_layers (layer "
                               f"schedules run), or vllm>=0.32,<0.34")
    check_parallel(depth, pc.tensor_parallel_size, pc.pipeline_parallel_size, len(depth.schedule(hf.num_hidden_layers)))
    sync_for_recompute(config, depth, asked_async)
    private_exit_blocks(config, depth)
    apply_cudagraph_policy(config, depth)
    if config.scheduler_config.scheduler_cls is None:
        name = "DepthAsyncScheduler" if config.scheduler_config.async_scheduling else "DepthScheduler"
        config.scheduler_config.scheduler_cls = f"{SCHEDULERS}.{name}"


def install() -> None:
    def wrap(original):
        def method(self, *args, **kwargs):
            check_v1_runner(self.speculative_config)
            config = original(self, *args, **kwargs)
            configure(config, self.async_scheduling)
            return config

        return method

    patch(EngineArgs, "create_engine_config", wrap)
