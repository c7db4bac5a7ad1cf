"""Shared fixtures: real checkpoints (built once into the cache) and real vLLM engines.

Engines take 20-60 s to start here, so one pool (``engines``) serves the whole test run: an engine is
started once per configuration and shared by every test that asks for it, the least recently used
ones shut down beyond ``VDEPTH_TEST_ENGINES`` (default 3) alive.  A test that changes an engine's
state takes a fresh one of its own (``engines.lease``); a test that starts engines outside the pool
(servers, subprocesses) asks for ``own_engines``.  Tests that use an engine fixture are marked
``slow`` here (``pytest_collection_modifyitems``).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

# Triton reads TRITON_INTERPRET when triton.language is first imported, and many imports pull Triton
# in (transformers, vLLM): set it before any of them, for the kernel tests that run the Triton
# kernels through the interpreter on this CPU (vllm_depth.early_exit.kernels.exit_check.use_triton follows it).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from vllm_depth.tools.bench import shutdown  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine: several live at once
# collective_rpc with a test function (inspecting the engine-side model) needs pickling
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

ENGINE_ARGS = dict(
    dtype="float32",  # the HF references run in fp32
    gpu_memory_utilization=0.3,
    max_model_len=1024,
    seed=0,
    enable_prefix_caching=False,  # prompt logprobs are asked of the same prompts repeatedly
)

# For engines checked against the HF reference or a stock engine: what the model computes, not how
# it is compiled.  Compiling costs ~45 s (tiny) to ~150 s (SmolLM2's depth model) per new engine
# here; the compiled depth path is covered on tiny (by the identity, early-exit, skip-set self-draft,
# compile-cache, pipeline-parallel and one compiled schedule test, against the compiled stock engine).
EAGER = dict(enforce_eager=True)

# Mixed lengths: from two tokens to a few hundred.
PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "Hi",
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line and run.\"\"\"\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who " * 6,
    "Q: What is 2 + 2?\nA:",
    "# Sort a list of dictionaries by the value of a key\n",
]


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    from vllm_depth.tools.checkpoints import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from vllm_depth.tools.checkpoints import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_dir() -> str:
    from vllm_depth.tools.checkpoints import resolve_model

    return resolve_model("gemma3-270m")


@pytest.fixture(scope="session")
def attended_head(smollm2_dir, tmp_path_factory) -> str:
    """A copy of SmolLM2 with an attention draft head trained for a minute (a tenth of train-exits'
    default: enough for drafts that are accepted and rejected); its config names the head and the
    draft (``draft_layers`` 0)."""
    from vllm_depth.tools.train_draft_attention import train_draft_attention

    out = str(tmp_path_factory.mktemp("attended") / "model")
    train_draft_attention(smollm2_dir, out=out, steps=300, chunks=48, self_text=16, self_tokens=96, eval_chunks=2,
                          progress=False)
    return out


def run_cli(*args, timeout=900):
    """``vllm-depth ARGS`` as a user runs it (a subprocess), output captured."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "vllm_depth.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


def make_llm(model: str, **kwargs):
    from vllm import LLM

    return LLM(model=model, **{**ENGINE_ARGS, **kwargs})


def engine_config(model: str, **kwargs):
    """The engine config ``make_llm(model, **kwargs)`` would build before starting any process: where
    vLLM and the plugin refuse settings (``patches.engine_args``, ``patches.registry``)."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=model, **{**ENGINE_ARGS, **kwargs}).create_engine_config()


def _frozen(value):
    """A hashable stand-in for engine arguments: dicts as sorted item tuples, lists as tuples."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class EnginePool:
    """The test run's vLLM engines, one per (checkpoint, arguments), started as ``make_llm`` starts
    them.  At most ``capacity`` unpinned engines (and leases) are alive: before another starts, the
    least recently used unpinned ones are shut down.  Pinned engines (``stock_llm``'s) live until
    the end of the run."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._engines: OrderedDict = OrderedDict()  # key -> LLM, least recently used first
        self._pinned: set = set()
        self._leases = 0

    @staticmethod
    def key(model: str, kwargs: dict) -> tuple:
        return str(model), _frozen(kwargs)

    def llm(self, model: str, *, pin: bool = False, **kwargs):
        """The pool's engine on ``model`` with ``kwargs`` (``ENGINE_ARGS`` beside them), started if
        there is none; ``pin``: never shut down before the end of the run."""
        key = self.key(model, kwargs)
        if key not in self._engines:
            if not pin:
                self._shrink(self.capacity - 1)
            self._engines[key] = make_llm(model, **kwargs)
        self._engines.move_to_end(key)
        if pin:
            self._pinned.add(key)
        return self._engines[key]

    @contextlib.contextmanager
    def lease(self, model: str, **kwargs):
        """A fresh engine of the caller's own, shut down on exit: for a test that patches the
        engine's internals (``collective_rpc``) or configures it in ways that must not reach
        another test."""
        self._shrink(self.capacity - 1)
        llm = make_llm(model, **kwargs)
        self._leases += 1
        try:
            yield llm
        finally:
            self._leases -= 1
            shutdown(llm)

    def trim(self) -> None:
        """Shut down every unpinned engine: for tests that start engines outside the pool."""
        self._shrink(0)

    def close(self) -> None:
        self._pinned.clear()
        self._shrink(0)

    def _shrink(self, keep: int) -> None:
        """Shut down the least recently used unpinned engines until ``keep`` (less the live leases)
        are left."""
        unpinned = [k for k in self._engines if k not in self._pinned]
        for key in unpinned[: max(0, len(unpinned) - max(0, keep - self._leases))]:
            shutdown(self._engines.pop(key))


@pytest.fixture(scope="session")
def engines():
    """The test run's engine pool (``EnginePool``)."""
    pool = EnginePool(int(os.environ.get("VDEPTH_TEST_ENGINES", "3")))
    yield pool
    pool.close()


@pytest.fixture
def own_engines(engines):
    """For a test that starts engines, servers or engine subprocesses outside the pool: the pool's
    unpinned engines are shut down first."""
    engines.trim()
    return engines


@pytest.fixture(scope="session")
def stock_llm(engines, tiny_dir, smollm2_dir):
    """``stock_llm(path)``: stock vLLM (``ENGINE_ARGS``) on a checkpoint, shared by the modules that
    compare against it: on tiny and SmolLM2 started once per session (pinned in the pool: an idle
    engine costs no CPU here), on another checkpoint kept as the pool keeps any engine (its memory).
    Compiled on tiny, as the compiled depth engines it is compared with; eager on any other
    checkpoint, as the depth engines on real weights are (compiling SmolLM2 costs a minute and a half)."""

    def get(path: str):
        return engines.llm(path, pin=path in (tiny_dir, smollm2_dir), **({} if path == tiny_dir else EAGER))

    return get


# A test that uses one of these (directly or through other fixtures) starts a vLLM engine or trains a
# draft head on SmolLM2: it is marked slow.
SLOW_FIXTURES = {"engines", "stock_llm", "own_engines", "attended_head"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def greedy(llm, prompts, max_tokens=32, logprobs=None, ignore_eos=False):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs, ignore_eos=ignore_eos)
    return llm.generate(prompts, sp, use_tqdm=False)


def prompt_logprobs(llm, token_ids: list[list[int]]) -> list[list[float]]:
    """Teacher-forced log p(ids[i] | ids[:i]) for i >= 1, from vLLM's prompt logprobs."""
    from vllm import SamplingParams, TokensPrompt

    sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], sp, use_tqdm=False)
    result = []
    for ids, out in zip(token_ids, outs):
        pl = out.prompt_logprobs
        result.append([pl[i][ids[i]].logprob for i in range(1, len(ids))])
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: str, log, args: list[str], env: dict | None = None):
    """``vllm serve MODEL --model-impl depth ARGS`` on 127.0.0.1 (fp32); yields its base URL."""
    import sys
    from pathlib import Path

    port = _free_port()
    vllm_cli = Path(sys.executable).parent / "vllm"  # the console script users run
    cmd = [
        str(vllm_cli), "serve", model, "--model-impl", "depth", *args,
        "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", "0.3", "--max-model-len", "1024", "--seed", "0",
        "--dtype", "float32",  # bf16 (the CPU default) changes these small models' answers
    ]
    base = f"http://127.0.0.1:{port}"
    with served(cmd, log, f"{base}/health", env=env):
        yield base


@contextlib.contextmanager
def served(cmd: list[str], log, ready_url: str, *, marker: str | None = None, env: dict | None = None,
           cwd=None, timeout: float = 600, stop_timeout: float = 60):
    """Run ``cmd`` (output to ``log``) until ``ready_url`` answers 200 (and ``log`` shows ``marker``,
    when given); fail with the log's tail if it exits or does not come up; terminate it on exit."""
    import subprocess
    import time
    from pathlib import Path

    import requests

    log, name = Path(log), " ".join(Path(c).name for c in cmd[:2])
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            if marker is None or marker in log.read_text():
                try:
                    if requests.get(ready_url, timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(2)
        else:
            pytest.fail(f"{name} did not come up:\n{log.read_text()[-4000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
