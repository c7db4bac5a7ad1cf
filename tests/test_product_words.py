"""The project's text speaks of the product: what the software does and what was measured.

Every text file tracked by git is scanned for phrases of a development log (numbered work stops
and issue numbers, targets to meet, work sessions, earlier versions of a file); git log holds the
history.  The patterns are narrow enough that ordinary words pass: pytest's ``scope="session"``, a
progress bar, ``foo_bar``, "issues a warning", links to upstream issue trackers.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

# a URL is a reference to some other project's tracker or page: its numbers are not ours
URL = re.compile(r"(?:https?://|www\.|github\.com/)\S+")
PHRASES = [
    # "stop" or "stops" and a number, unless a unit follows it (a count of tokens, steps, ...)
    r"\bstops? #?\d+\b(?!\s*(?:tokens?|steps?|rows?|layers?|positions?|requests?|words?|ms|seconds?|s)\b)",
    r"\bissues? #?\d+\b",  # outside a URL (URLs are blanked first)
    r"\bthe bars?\b(?!\s*(?:chart|plot|graph|heights?|widths?|colou?rs?|labels?)\b)",  # a target to meet
    r"\b\w+(?:-\w+)+ bars?\b(?!\s*(?:chart|plot|graph|heights?|widths?|colou?rs?|labels?)\b)",  # "no-heads bar"
    r"\bbars? (?:is|are|stays?|was|were) (?:not )?(?:met|missed|cleared)\b",
    r"\b(?:meets?|met|misse[sd]|clears?|cleared) (?:its|their|a|this|that) bars?\b",
    r"\bfoundation bars?\b",
    r"\bthis session\b",
    r"\b(?:earlier|previous|last|next) sessions?\b",
    r"\bprevious (?:versions?|defaults?)\b",
    r"\bearlier versions?\b",
    r"\bversions? before\b(?!\s+v?\d+\.\d+)",  # "versions before 0.11" of a dependency is fine
    r"\bclosing notes?\b",
]
PATTERN = re.compile("|".join(f"(?:{p})" for p in PHRASES), re.IGNORECASE)


def process_phrases(line: str) -> list[str]:
    """The development-log phrases in ``line`` (URLs left out)."""
    return [m.group(0) for m in PATTERN.finditer(URL.sub(" ", line))]


def tracked_files() -> list[Path]:
    """Every file git tracks (that exists in the work tree); without git, the tree minus build output."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
        names = [n for n in out.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
        return [p for p in (ROOT / n for n in names) if p.is_file()]
    except (OSError, subprocess.SubprocessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            files += [Path(dirpath) / f for f in filenames]
        return files


def text_of(path: Path) -> str | None:
    """The file's text, None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_matcher_flags_process_phrases_and_passes_ordinary_words():
    flagged = [
        "# dropped at stop 24 to keep CI under 40 minutes",
        "since stop 25 with 4 ABBA rounds",
        "Early-exit bars of issue 3: SmolLM2-135M",
        "see issue #12 for the plan",
        "timed: the bar is 15 minutes",
        "it meets the bars",
        "Issue 4's no-heads bar: self-drafting",
        "the exit-heads bar (0.45 at layer 16)",
        "drop 6 middle ones (the foundation bar)",
        "The bar stays not met.",
        "it meets its bar at k=1",
        "measured in this session",
        "as in the previous session",
        "the previous version of this README",
        "the previous defaults were slower",
        "where an earlier version listed them",
        "versions before stop 23 kept the heads beside the weights",
        "Closing note: all done",
    ]
    for line in flagged:
        assert process_phrases(line), line
    ordinary = [
        '@pytest.fixture(scope="session")',
        "the session's stock engine on the original checkpoint",
        "Shows a progress bar with the running loss",
        "with tqdm(total=n) as bar: bar.update(1)",
        "foo_bar = bar_baz + 1",
        "ax.bar(names, vals)",
        "the bar chart of tokens/s",
        "a two-column bar chart",
        "it issues a warning and goes on",
        "known upstream: https://github.com/vllm-project/vllm/issues/123",
        "(github.com/vllm-project/vllm/issues/4567)",
        "generation stops 3 tokens later; stop 2 steps early",
        "vLLM versions before 0.11 lack the hook",
        "range(start, stop)",
    ]
    for line in ordinary:
        assert not process_phrases(line), (line, process_phrases(line))


def test_no_development_log_in_tracked_files():
    hits = []
    for path in tracked_files():
        if path.resolve() == SELF:
            continue  # it spells the patterns out
        text = text_of(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if process_phrases(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:200]}")
    assert not hits, "development-log phrases (say what the software does or what was measured):\n" + "\n".join(hits)
