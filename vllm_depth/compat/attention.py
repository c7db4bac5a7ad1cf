"""Attention over a subset of a step's rows, through vLLM's own metadata builders (vLLM 0.32).

Early exit takes exited tokens out of the batch and the self-draft runs decode-shaped steps the
runner did not schedule.  Both build attention metadata the way the runner does: a
``CommonAttentionMetadata`` given to each attention group's own builder.  No backend is named.
"""

from __future__ import annotations

import dataclasses

import torch
from vllm.config import CUDAGraphMode
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.platforms import current_platform
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.registry import AttentionBackendEnum

# CommonAttentionMetadata fields, by how a subset of the step's rows takes them (vLLM 0.32 to 0.34;
# replayssm_decode_base_cpu is gone in 0.34).  The compat tests fail when vLLM adds a field that is in
# none of these; a subset sets only the fields of the installed release (_FIELDS).
_PER_REQUEST = ("seq_lens", "seq_lens_cpu_upper_bound", "block_table_tensor", "is_prefilling", "req_idx",
                "rswa_prefix_lens", "replayssm_decode_base_cpu")
_PER_TOKEN = ("slot_mapping", "positions")
_DERIVED = ("query_start_loc", "query_start_loc_cpu", "num_reqs", "num_actual_tokens", "max_query_len",
            "max_seq_len", "causal")
# features a subset cannot carry (fast-prefill KV sharing, cross attention, decode context parallelism,
# multimodal bidirectional ranges): the step must not use them
_UNSUPPORTED = ("logits_indices_padded", "num_logits_indices", "max_logits_per_req", "encoder_seq_lens",
                "encoder_seq_lens_cpu", "dcp_local_seq_lens", "dcp_local_seq_lens_cpu_upper_bound",
                "mm_req_doc_ranges")
# memoised values of the full batch, computed again by whoever asks the subset
_CACHES = ("_num_computed_tokens_cache", "_token_to_req_indices_cache")
SUBSET_FIELDS = _PER_REQUEST + _PER_TOKEN + _DERIVED + _UNSUPPORTED + _CACHES
_FIELDS = frozenset(f.name for f in dataclasses.fields(CommonAttentionMetadata))


def subset_common_metadata(common, req_of_row, keep_rows):
    """The step's ``CommonAttentionMetadata`` (vLLM 0.32) for the kept token rows ``keep_rows`` only.

    ``req_of_row``: the request index of each kept row (ascending; a request keeps its first rows:
    only its last can exit, so a request that kept fewer rows attends as a shorter one).  Derived for
    any attention backend: the kept requests' block-table rows, sequence lengths and flags, the kept
    rows' slots and positions, new query start locations and maxima (from the CPU copies: no device
    sync).  The result goes to the attention group's own metadata builder.
    """
    for name in _UNSUPPORTED:
        if getattr(common, name, None) is not None:
            raise NotImplementedError(f"token-level early exit cannot attend over a subset of rows with "
                                      f"CommonAttentionMetadata.{name} set")
    if isinstance(common.causal, torch.Tensor):
        raise NotImplementedError("token-level early exit supports causal decoder attention only")
    keep_reqs, qlen = torch.unique_consecutive(req_of_row, return_counts=True)
    qsl_cpu = torch.zeros(keep_reqs.numel() + 1, dtype=common.query_start_loc_cpu.dtype)
    torch.cumsum(qlen.to(qsl_cpu.dtype), 0, out=qsl_cpu[1:])
    old_qlen = common.query_start_loc_cpu[1:] - common.query_start_loc_cpu[:-1]
    dropped = (old_qlen[keep_reqs] - qlen).to(common.seq_lens.dtype)  # rows left behind (kv_fill 'recompute')
    fields = {name: _rows_of(getattr(common, name, None), keep_reqs) for name in _PER_REQUEST if name in _FIELDS}
    fields.update({name: _rows_of(getattr(common, name, None), keep_rows) for name in _PER_TOKEN})
    fields["seq_lens"] = fields["seq_lens"] - _to(dropped, fields["seq_lens"].device)
    upper = fields["seq_lens_cpu_upper_bound"]
    if upper is not None:
        upper = fields["seq_lens_cpu_upper_bound"] = upper - dropped.to(upper.dtype)
    elif fields["seq_lens"].device.type == "cpu":
        upper = fields["seq_lens"]
    return common.replace(
        **fields,
        **dict.fromkeys(_CACHES),
        query_start_loc=_to(qsl_cpu, common.query_start_loc.device),
        query_start_loc_cpu=qsl_cpu,
        num_reqs=keep_reqs.numel(),
        num_actual_tokens=keep_rows.numel(),
        max_query_len=int(qlen.max()),
        max_seq_len=int(upper.max()) if upper is not None else common.max_seq_len,  # an upper bound is allowed
    )


def _rows_of(x, index):
    """``x[index]`` (index moved to ``x``'s device), or None for None."""
    return None if x is None else x[_to(index, x.device)]


def _to(x, device):
    """``x`` on ``device`` (no copy when it is there)."""
    return x if x.device == device else x.to(device, non_blocking=True)


def build_group_metadata(group, common):
    """``group``'s metadata for ``common`` from its own builder, not kept as the step's (a subset, a draft)."""
    build = type(group).build_metadata
    return getattr(build, "__wrapped__", build)(group, common)


def attention_groups_by_layer(attn_groups) -> dict:
    """{layer name: its attention group} over the runner's ``attn_groups`` (one list per KV cache group)."""
    return {name: group for groups in attn_groups for group in groups for name in group.layer_names}


def current_query_start_loc(groups: dict):
    """The step's ``query_start_loc`` (CPU), from the ``CommonAttentionMetadata`` the runner handed the
    attention groups (``groups``: ``attention_groups_by_layer``), or None (profiling runs, or metadata
    that no group's builder built this step)."""
    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if not isinstance(metadata, dict) or not metadata:
        return None
    name, meta = next(iter(metadata.items()))
    group = groups.get(name)
    if group is None or getattr(group, "depth_metadata", None) is not meta:
        return None
    return group.depth_common.query_start_loc_cpu


def writes_kv_cache() -> bool:
    """Whether this forward pass attends and writes the paged KV cache: a scheduled step (or a CUDA
    graph capture), not vLLM's profiling and warm-up runs, which carry no attention metadata."""
    return is_forward_context_available() and bool(get_forward_context().attn_metadata)


class AttentionViews:
    """The forward context's attention metadata and slots, narrowed as tokens exit.

    vLLM 0.32 ``ForwardContext.attn_metadata`` / ``slot_mapping`` (dicts keyed
    by layer name) are what ``Attention.forward`` reads; they are replaced for
    the rest of the step and restored by ``restore()``.  The narrowed metadata
    comes from each layer's attention group's own builder, given the step's
    ``CommonAttentionMetadata`` for the kept rows (``subset_common_metadata``).

    The step runs without CUDA graphs while it is narrowed (``cudagraph_runtime_mode`` NONE):
    vLLM captures graphs of the full-depth forward only, never of the compacted stretches
    (``cudagraph_policy``).
    """

    def __init__(self, groups: dict):
        self.groups = groups  # attention_groups_by_layer
        self.ctx = get_forward_context()
        self.attn_metadata = self.ctx.attn_metadata
        self.slot_mapping = self.ctx.slot_mapping
        self.graph_mode = self.ctx.cudagraph_runtime_mode
        if not isinstance(self.attn_metadata, dict) or not isinstance(self.slot_mapping, dict):
            raise NotImplementedError("token-level early exit needs one attention metadata per layer")
        self.ctx.cudagraph_runtime_mode = CUDAGraphMode.NONE

    def slots_of(self, rows):
        """``attn ->`` the original cache slots of ``rows`` at ``attn``'s layer (for the KV fill),
        indexing each distinct slot mapping once (the layers of one KV cache group share theirs)."""
        memo = {}

        def slots(attn):
            mapping = self.slot_mapping[attn.layer_name]
            out = memo.get(id(mapping))
            if out is None:
                out = memo[id(mapping)] = mapping[_to(rows, mapping.device)]
            return out

        return slots

    def narrow(self, layers, req_of_row, keep_rows) -> None:
        """From now on, ``layers`` attend for the kept rows only (``req_of_row``: their requests)."""
        subsets: dict[int, object] = {}
        metadata, slots = dict(self.attn_metadata), dict(self.slot_mapping)
        for attn in layers:
            name = attn.layer_name
            meta = self.attn_metadata[name]
            if id(meta) not in subsets:
                subsets[id(meta)] = self._subset(name, meta, req_of_row, keep_rows)
            metadata[name] = subsets[id(meta)]
            mapping = self.slot_mapping[name]
            slots[name] = mapping[_to(keep_rows, mapping.device)]
        self.ctx.attn_metadata, self.ctx.slot_mapping = metadata, slots

    def _subset(self, name: str, meta, req_of_row, keep_rows):
        group = self.groups[name]
        if getattr(group, "depth_metadata", None) is not meta:
            raise NotImplementedError(f"token-level early exit: the attention metadata of {name} was not built "
                                      "by its attention group's builder this step")
        return build_group_metadata(group, subset_common_metadata(group.depth_common, req_of_row, keep_rows))

    def restore(self) -> None:
        self.ctx.attn_metadata, self.ctx.slot_mapping = self.attn_metadata, self.slot_mapping
        self.ctx.cudagraph_runtime_mode = self.graph_mode


def draft_attention(runner, rows, positions, query_lens=None):
    """Attention metadata for draft tokens of request rows ``rows`` at ``positions``: one token per
    row (decode-shaped), or ``query_lens[j]`` consecutive positions for row ``rows[j]`` (``positions``
    concatenated in row order; the attention draft head's pass over a step's rows).

    vLLM 0.32 ``GPUModelRunner._build_attention_metadata`` for a step the
    runner did not schedule: the rows' block tables (``InputBatch.block_table``),
    seq_lens ``last position + 1``, and each attention group's own metadata builder
    (``AttentionGroup.build_metadata``), as for a subset of a step's rows.
    Returns (per-layer metadata, per-layer slot mapping) for ``set_forward_context``.
    """

    n, t = rows.numel(), positions.numel()
    device = runner.device
    metadata, slot_mapping = {}, {}
    qlen = torch.ones(n, dtype=torch.int32) if query_lens is None else query_lens.to(torch.int32)
    qsl_cpu = torch.zeros(n + 1, dtype=torch.int32)
    torch.cumsum(qlen, 0, out=qsl_cpu[1:])
    row_of_token = torch.repeat_interleave(torch.arange(n), qlen.long())
    seq_lens_cpu = (positions[qsl_cpu[1:].long() - 1] + 1).to(torch.int32)
    seq_lens, qsl, pos = (_to(x, device) for x in (seq_lens_cpu, qsl_cpu, positions))
    for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups):
        table = runner.input_batch.block_table[gid]
        blocks_cpu = table.get_cpu_tensor()[rows]
        bs = table.block_size
        slots = blocks_cpu[row_of_token].gather(1, (positions // bs)[:, None])[:, 0].long() * bs + positions % bs
        slots = _to(slots, device)
        common = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl_cpu, seq_lens=seq_lens, num_reqs=n,
            num_actual_tokens=t, max_query_len=int(qlen.max()), max_seq_len=int(seq_lens_cpu.max()),
            block_table_tensor=_to(blocks_cpu, device), slot_mapping=slots, causal=True,
            seq_lens_cpu_upper_bound=seq_lens_cpu, positions=pos,
        )
        for attn_group in runner.attn_groups[gid]:
            meta = build_group_metadata(attn_group, common)
            for name in attn_group.layer_names:
                metadata[name] = meta
        for name in group.layer_names:
            slot_mapping[name] = slots
    return metadata, slot_mapping


def write_kv(attn, key, value, slots) -> None:
    """vLLM 0.32 ``unified_kv_cache_update``: write K/V rows into ``attn``'s paged cache at ``slots``."""
    attn.impl.do_kv_cache_update(
        attn,
        key.view(-1, attn.num_kv_heads, attn.head_size),
        value.view(-1, attn.num_kv_heads, attn.head_size_v),
        attn.kv_cache,
        slots,
    )


def kv_write_is_separate(attn) -> bool:
    """Whether ``attn``'s backend writes the KV cache in a step of its own (``do_kv_cache_update``),
    not inside its forward (``forward_includes_kv_cache_update``): the KV fill needs it."""
    return not attn.attn_backend.forward_includes_kv_cache_update


def backend_name(attn) -> str:
    return attn.attn_backend.get_name()


def exit_capable_backends() -> list[str]:
    """The registered attention backends whose KV-cache write is a separate step (importable here)."""

    names = []
    for member in AttentionBackendEnum:
        if member.name.startswith("ROCM_") and not current_platform.is_rocm():
            # some ROCm backend modules import vllm._C, whose op library a CPU build's own _C refuses
            # with a C++ abort that no except clause catches
            continue
        try:
            backend = member.get_class()
        except Exception:  # a backend whose kernels this build lacks
            continue
        if not getattr(backend, "forward_includes_kv_cache_update", True):
            names.append(member.name)
    return names
