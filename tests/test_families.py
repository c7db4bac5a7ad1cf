"""The other families the depth path accepts (Qwen2: qkv bias, Qwen3: q/k norms, Mistral),
on tiny random checkpoints, against their Hugging Face implementation."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from conftest import EAGER, PROMPTS, greedy, prompt_logprobs

COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, initializer_range=0.08,
              tie_word_embeddings=True)


def _build(kind: str, path, tokenizer_dir: str) -> str:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    cfg = cfg_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **COMMON)
    torch.manual_seed(1)
    model = model_cls(cfg).float()
    if kind == "qwen2":  # make the qkv bias matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "mistral"])
def family(request, engines, tmp_path_factory, tiny_dir):
    path = _build(request.param, tmp_path_factory.mktemp(request.param), tiny_dir)
    schedule = [0, 2, 2, 1]  # reorder + repeat: every code path of the family
    llm = engines.llm(path, model_impl="depth", hf_overrides={"depth": {"layer_schedule": schedule}}, **EAGER)
    return llm, ref.hf_model(path, schedule)


def test_runs_as_a_depth_model_and_matches_hf(family):
    llm, model = family
    assert llm.llm_engine.model_config.architecture.startswith("Depth")
    tok = llm.get_tokenizer()
    seqs = [tok.encode(p + " and so on.") for p in PROMPTS[:3]]
    for ids, lp in zip(seqs, prompt_logprobs(llm, seqs)):
        worst = max(abs(a - b) for a, b in zip(lp, ref.teacher_forced(model, ids)))
        assert worst < 1e-3, f"max |dlogp| {worst:.2e}"
    for out in greedy(llm, PROMPTS[:4], max_tokens=12, ignore_eos=True):
        want = ref.greedy(model, out.prompt_token_ids, 12)
        ok, detail = ref.first_divergence_is_near_tie(model, out.prompt_token_ids, list(out.outputs[0].token_ids), want)
        assert ok, detail
