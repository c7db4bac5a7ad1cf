"""The CUDA-graph mode a depth engine runs under (vLLM 0.32 ``CUDAGraphMode``)."""

from __future__ import annotations

from vllm.config import CUDAGraphMode


def cudagraph_policy(mode, *, exits: bool, self_draft: bool = False):
    """The CUDA-graph mode a depth engine runs under, and why: ``(mode, reason)``.

    vLLM captures graphs of the model's whole forward (FULL) or of its pieces between attention ops
    (PIECEWISE), for fixed padded token counts, in warm-up runs where no token can exit.

    - Early exit: a step where a token may exit runs its compiled segments without graphs
      (``AttentionViews`` sets the step's runtime mode to NONE), so a compacted stretch never
      replays a graph captured for another row count; steps where no token can exit replay the
      full-depth graphs.  A FULL graph replays the whole forward without running the model's
      Python, so no exit check would run: the FULL part of a mode is dropped (FULL_AND_PIECEWISE ->
      PIECEWISE, FULL and FULL_DECODE_ONLY -> NONE).
    - Self-draft: the verifier runs at full depth and keeps every mode; the draft forwards run
      under their own forward context, without graphs.
    """
    if mode == CUDAGraphMode.NONE:
        return mode, "NONE: no CUDA graphs are captured (enforce_eager, or a platform without them)"
    if exits and mode.has_full_cudagraphs():
        kept = CUDAGraphMode.PIECEWISE if mode.has_mode(CUDAGraphMode.PIECEWISE) else CUDAGraphMode.NONE
        return kept, (f"{mode.name} -> {kept.name}: a full graph would replay the forward without its exit "
                      "checks; steps where a token may exit run their segments without graphs")
    if exits:
        return mode, (f"{mode.name}: steps where no token can exit replay the full-depth graphs; steps "
                      "where a token may exit run their segments without graphs")
    return mode, f"{mode.name}: the verifier keeps it; draft forwards run without graphs"
