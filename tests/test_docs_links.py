"""Every relative link and image in the project's Markdown (README.md, docs/*.md, benchmarks/**/*.md)
points at a path that exists, relative to the Markdown file (``#anchor`` stripped; web links, mailto
and in-page anchors are not checked)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,}).*?^\1\2[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target); the text may hold one level of brackets; an optional "title"
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def link_targets(text: str) -> list[str]:
    """The link and image targets of a Markdown text, code blocks and code spans left out."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = [m.group(1) for m in INLINE.finditer(text)] + [m.group(1) for m in REFERENCE.finditer(text)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def local_path(target: str) -> str | None:
    """The path part of a relative link, None for a web link, mailto or a pure anchor."""
    if not target or target.startswith("#") or EXTERNAL.match(target):
        return None
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    return path or None


def broken_links(md: Path) -> list[str]:
    out = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        path = local_path(target)
        if path is None:
            continue
        resolved = ROOT / path.lstrip("/") if path.startswith("/") else md.parent / path
        if not resolved.exists():
            out.append(f"{md.relative_to(ROOT)}: ({target}) -> {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
    return out


def test_link_parser():
    text = "\n".join([
        "See [the guide](docs/guide.md#setup), ![plot](benchmarks/results/a.png \"a plot\")",
        "and [`x[0]`](docs/x.md), [web](https://example.com/a.md), [mail](mailto:a@b.c), [top](#top),",
        "[ref]: docs/ref.md",
        "`[not a link](nowhere.md)`",
        "```",
        "[not a link either](nowhere.md)",
        "```",
        "[spaced](<docs/a file.md>)",
    ])
    targets = link_targets(text)
    assert [local_path(t) for t in targets if local_path(t)] == [
        "docs/guide.md", "benchmarks/results/a.png", "docs/x.md", "docs/a file.md", "docs/ref.md"]
    assert "nowhere.md" not in targets


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    broken = broken_links(md)
    assert not broken, "links to missing paths:\n" + "\n".join(broken)
