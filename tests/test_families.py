"""The other families the depth path accepts (Qwen2: qkv bias, Qwen3: q/k norms, Mistral; Gemma 3:
norms before and after attention and MLP, a scaled embedding, RMSNorm gains of 1 + w, q/k norms,
sliding-window and global layers with their own rotary bases), on tiny random checkpoints, against
their Hugging Face implementation."""

from __future__ import annotations

import pytest
import reference as ref
import reference_exit as rx
import torch
from conftest import EAGER, PROMPTS, greedy, prompt_logprobs

COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, initializer_range=0.08,
              tie_word_embeddings=True)
# a window of 8 tokens, so that the prompts and outputs here outgrow it; two rotary bases
GEMMA3 = dict(layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=8,
              query_pre_attn_scalar=64,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})


def _build(kind: str, path, tokenizer_dir: str) -> str:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[kind]
    extra = GEMMA3 if kind == "gemma3" else {}
    cfg = cfg_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  **COMMON, **extra)
    torch.manual_seed(1)
    model = model_cls(cfg).float()
    if kind == "gemma3":  # norm gains away from Gemma's initial 1 + 0
        for name, param in model.named_parameters():
            if "norm" in name:
                torch.nn.init.normal_(param, std=0.3)
    if kind == "qwen2":  # make the qkv bias matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "mistral", "gemma3"])
def family(request, engines, tmp_path_factory, tiny_dir):
    path = _build(request.param, tmp_path_factory.mktemp(request.param), tiny_dir)
    schedule = [0, 2, 2, 1]  # reorder + repeat: every code path of the family
    llm = engines.llm(path, model_impl="depth", hf_overrides={"depth": {"layer_schedule": schedule}}, **EAGER)
    return llm, ref.hf_model(path, schedule)


def test_runs_as_a_depth_model_and_matches_hf(family):
    llm, model = family
    assert llm.llm_engine.model_config.architecture.startswith("Depth")
    tok = llm.get_tokenizer()
    seqs = [tok.encode(p + " and so on.") for p in (*PROMPTS[:3], PROMPTS[5])]
    for ids, lp in zip(seqs, prompt_logprobs(llm, seqs)):
        worst = max(abs(a - b) for a, b in zip(lp, ref.teacher_forced(model, ids)))
        assert worst < 1e-3, f"max |dlogp| {worst:.2e}"
    for out in greedy(llm, PROMPTS[:4], max_tokens=12, ignore_eos=True):
        want = ref.greedy(model, out.prompt_token_ids, 12)
        ok, detail = ref.first_divergence_is_near_tie(model, out.prompt_token_ids, list(out.outputs[0].token_ids), want)
        assert ok, detail


def test_gemma3_exits_fill_sliding_window_and_global_layers_as_the_reference(engines, tmp_path_factory, tiny_dir):
    """Decode tokens of the tiny Gemma 3 exit after layer 0 or run all three (saturation 0.62): an
    exited token's K/V at the global layer 1 and the sliding-window layer 2 (a KV-cache group of its
    own) come from state propagation, and the later full-depth tokens attend to them through each
    layer's window of 8, as in the plain-PyTorch reference."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from vllm_depth.tools.bench import start_exit_trace, take_exit_trace

    path = _build("gemma3", tmp_path_factory.mktemp("gemma3_exit"), tiny_dir)
    depth = {"exit_layers": [1], "exit_criterion": "saturation", "exit_threshold": 0.62}
    llm = engines.llm(path, model_impl="depth", hf_overrides={"depth": depth}, **EAGER)
    n, prompts = 16, PROMPTS[3:6]
    start_exit_trace(llm)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=0),
                        use_tqdm=False)
    trace = take_exit_trace(llm)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    wide = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                sliding_window=4096).eval()
    read_fills = windowed = 0
    for o in outs:
        want = rx.early_exit_greedy(model, o.prompt_token_ids, n, exit_layers=[1], threshold=0.62,
                                    criterion="saturation")
        tokens = list(o.outputs[0].token_ids)
        ok, detail = rx.agrees(want, tokens, [3] + trace[o.request_id])
        assert ok, detail
        if tokens == want.tokens:  # then every step's log-probability too (tokens alone barely see the fills)
            with torch.no_grad():
                ref_lp = [torch.log_softmax(rx._logits(model, h), -1)[t].item() for h, t in zip(want.hidden, tokens)]
            got_lp = [step[t].logprob for step, t in zip(o.outputs[0].logprobs, tokens)]
            worst = max(abs(a - b) for a, b in zip(ref_lp, got_lp))
            assert worst < 1e-3, f"max |dlogp| {worst:.2e}"
        # a full-depth token after an exited one: it reads propagated K/V
        read_fills += any(a == 1 and 3 in want.exit_layers[i + 2:] for i, a in enumerate(want.exit_layers[1:]))
        windowed += rx.early_exit_greedy(wide, o.prompt_token_ids, n, exit_layers=[1], threshold=0.62,
                                         criterion="saturation").tokens != want.tokens
    assert read_fills > 0 and windowed > 0  # fills are read, and the window changes what is generated
