"""The catalogue of vLLM internals (``vllm_depth/compat/entries.py``) that ``python -m
vllm_depth.compat.audit`` compares across vLLM releases: it names every vLLM function a patch wraps
and every vLLM module attribute ``compat/`` imports, read from the source with ``ast`` and looked up
in the installed vLLM's source (vLLM is not imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_depth.compat.audit import Tree, compare, installed_vllm, locate, stale_notes
from vllm_depth.compat.entries import ENTRIES, Entry
from vllm_depth.compat.notes import NOTES

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_depth"
ENTRY_NAMES = {(e.module, e.name) for e in ENTRIES}


@pytest.fixture(scope="module")
def tree():
    return Tree(installed_vllm())


def vllm_imports(path: Path, tree: Tree) -> tuple[dict[str, tuple[str, str | None]], list[tuple[str, str, int]]]:
    """``({alias: (vLLM module, name or None for a module)}, [(module, name, line) of each imported name])``."""
    aliases, names = {}, []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vllm" and a.asname:
                    aliases[a.asname] = (a.name, None)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "vllm":
            for a in node.names:
                submodule = f"{node.module}.{a.name}"
                if tree.file_of(submodule) is not None:
                    aliases[a.asname or a.name] = (submodule, None)
                else:
                    aliases[a.asname or a.name] = (node.module, a.name)
                    names.append((node.module, a.name, node.lineno))
    return aliases, names


def patched(path: Path, tree: Tree) -> list[tuple[str, str, int]]:
    """``(module, qualified name, line)`` of every vLLM attribute ``path`` replaces: ``patch(Owner, "name",
    ...)`` calls (``patches.base.patch``) and assignments ``Owner.name = ...``."""
    aliases, _ = vllm_imports(path, tree)
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "patch"
                and isinstance(node.args[0], ast.Name) and isinstance(node.args[1], ast.Constant)):
            targets.append((node.args[0].id, node.args[1].value, node.lineno))
        elif isinstance(node, ast.Assign):
            targets += [(t.value.id, t.attr, node.lineno) for t in node.targets
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)]
    out = []
    for owner, name, line in targets:
        if owner in aliases:
            module, cls = aliases[owner]
            out.append((module, name if cls is None else f"{cls}.{name}", line))
    return out


def defined_in(tree: Tree, module: str, name: str) -> str | None:
    found = locate(tree, module, name, "auto")
    return None if found is None else found.module


def covered(tree: Tree, module: str, name: str) -> bool:
    """Whether an entry names ``module.name``: itself or one of its members, from the same module or from
    the module that defines it (a re-export).  Across a version switch, where the installed vLLM lacks
    the import's module or the entry's, an entry of the same name covers it (the audit follows a moved
    name)."""
    same_name = [e for e in ENTRIES if e.name == name or e.name.startswith(name + ".")]
    if any(e.module == module for e in same_name):
        return True
    if tree.file_of(module) is None or any(tree.file_of(e.module) is None for e in same_name):
        return bool(same_name)
    where = defined_in(tree, module, name)
    return where is not None and any(defined_in(tree, e.module, name) == where for e in same_name)


def test_every_function_a_patch_replaces_has_an_entry(tree):
    found, missing = [], []
    for path in sorted((PACKAGE / "patches").rglob("*.py")):
        for module, name, line in patched(path, tree):
            found.append(name)
            if (module, name) not in ENTRY_NAMES:
                missing.append(f"{path.relative_to(PACKAGE)}:{line} {module}:{name}")
    assert "GPUModelRunner._model_forward" in found and "VllmConfig.num_lookahead_tokens" in found, found
    assert not missing, missing


def test_every_vllm_name_compat_imports_has_an_entry(tree):
    found, missing = [], []
    for path in sorted((PACKAGE / "compat").glob("*.py")):
        aliases, names = vllm_imports(path, tree)
        module_reads = [(aliases[n.value.id][0], n.attr, n.lineno) for n in ast.walk(ast.parse(path.read_text()))
                        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                        and aliases.get(n.value.id, ("", ""))[1] is None]
        for module, name, line in names + module_reads:
            found.append(name)
            if not covered(tree, module, name):
                missing.append(f"{path.relative_to(PACKAGE)}:{line} {module}:{name}")
    assert {"CommonAttentionMetadata", "dispatch_cpu_unquantized_gemm", "make_arg_parser"} <= set(found), found
    assert not missing, missing


def test_the_coverage_check_sees_a_name_without_an_entry(tree):
    assert covered(tree, "vllm.config", "CUDAGraphMode")  # re-exported from vllm.config.compilation
    assert covered(tree, "vllm.entrypoints.common.cli_args", "make_arg_parser")  # one side of a version switch
    assert not covered(tree, "vllm.config", "VllmConfig.not_a_field")
    assert not covered(tree, "vllm.sampling_params", "RequestOutputKind")


def test_every_patch_module_is_installed_and_catalogued():
    """Each module under patches/ with an ``install()`` is imported by patches/__init__.py (which builds
    ``PATCHES`` from them) and has a row in its catalogue table."""
    init = PACKAGE / "patches" / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    imported = {a.asname or a.name for n in ast.walk(ast.parse(init.read_text())) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("vllm_depth.patches") for a in n.names}
    for path in sorted(p for p in (PACKAGE / "patches").rglob("*.py") if p.name != "__init__.py"):
        has_install = any(isinstance(n, ast.FunctionDef) and n.name == "install"
                          for n in ast.parse(path.read_text()).body)
        if has_install:
            dotted = ".".join(path.relative_to(PACKAGE / "patches").with_suffix("").parts)
            assert path.stem in imported, dotted
            assert f"| ``{dotted}`` |" in doc, dotted


def test_every_note_names_an_entry():
    for release, notes in NOTES.items():
        assert not stale_notes(notes), (release, stale_notes(notes))


def test_the_audit_imports_neither_vllm_nor_torch():
    code = ("import sys, vllm_depth.compat.audit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"


def test_the_audit_tells_same_changed_moved_and_missing(tmp_path):
    def release(root: Path, files: dict[str, str]) -> Tree:
        for rel, text in {"vllm/__init__.py": "", **files}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return Tree(str(root))

    base = release(tmp_path / "base", {"vllm/a.py": (
        "class C:\n    def f(self, x):\n        '''doc'''\n        return x\n"
        "    def g(self):\n        self.n = 1\n"
        "def h(y):\n    return y\n"
        "def gone():\n    pass\n")})
    new = release(tmp_path / "new", {
        "vllm/a.py": ("class C:\n    def f(self, x):\n        return x  # same code, no docstring\n"
                      "    def g(self):\n        self.n, self.m = 2, 3\n"),
        "vllm/b.py": "def h(y):\n    return y\n"})
    status = {e.name: compare(e, base, new, "new").status
              for e in (Entry("vllm.a", n, "", "") for n in ("C.f", "C.n", "h", "gone"))}
    assert status == {"C.f": "same (docstrings/comments differ)", "C.n": "changed (+1 -1 lines)",
                      "h": "moved to `vllm.b`: same", "gone": "missing in new"}
