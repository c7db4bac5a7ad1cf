"""Audit the vLLM internals vllm-depth depends on against another vLLM release.

Reads vLLM's source only (a wheel, or a directory holding the ``vllm`` package) with ``ast``;
neither vLLM nor torch is imported, and no engine module imports this one.  For every entry of
``compat.entries.ENTRIES`` (the functions, methods, classes and attributes the plugin patches or
relies on) the definition is taken from both trees, normalised (docstrings and comments dropped,
``ast.unparse``) and compared:

    same | changed (+A -B lines) | moved to MODULE | missing in NEW

The result is a Markdown table ``function | BASE -> NEW | how the plugin handles it``; the third
column carries the judgement in ``compat.notes.NOTES`` for entries that are not ``same``.

Usage: python -m vllm_depth.compat.audit WHEEL [--base PATH] [--diff] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import importlib.util
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vllm_depth.compat.entries import ENTRIES, Entry
from vllm_depth.compat.notes import NOTES

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (*_FUNCS, ast.ClassDef, ast.Module)
_BLOCKS = (ast.If, ast.Try)


# -- source trees ----------------------------------------------------------------------------


class Tree:
    """The ``vllm`` package of a wheel (a zip) or of a directory: its ``.py`` files, parsed on demand."""

    def __init__(self, path: str):
        self.path = path
        self._zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        self.is_wheel = self._zip is not None
        self._root = None if self._zip else _package_root(Path(path))
        self._files = self._list_files()
        self._parsed: dict[str, tuple[str, ast.Module] | None] = {}

    def _list_files(self) -> set[str]:
        if self._zip is not None:
            return {n for n in self._zip.namelist() if n.startswith("vllm/") and n.endswith(".py")}
        return {p.relative_to(self._root).as_posix() for p in (self._root / "vllm").rglob("*.py")}

    def read(self, rel: str) -> str:
        if self._zip is not None:
            return self._zip.read(rel).decode("utf-8", "replace")
        return (self._root / rel).read_text(encoding="utf-8", errors="replace")

    def file_of(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for rel in (f"{base}.py", f"{base}/__init__.py"):
            if rel in self._files:
                return rel
        return None

    def is_package(self, module: str) -> bool:
        return (self.file_of(module) or "").endswith("/__init__.py")

    def parsed(self, module: str) -> tuple[str, ast.Module] | None:
        if module not in self._parsed:
            rel = self.file_of(module)
            self._parsed[module] = None if rel is None else _parse(self.read(rel))
        return self._parsed[module]

    def modules(self) -> list[str]:
        return sorted(_module_name(rel) for rel in self._files)

    def version(self) -> str:
        found = self.parsed("vllm._version")
        if found is not None:
            for node in found[1].body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                    return str(node.value.value)
        match = re.search(r"vllm(?:_cpu)?-(\d+\.\d+[^-]*)-", Path(self.path).name)
        return match.group(1) if match else Path(self.path).name


def _package_root(path: Path) -> Path:
    if (path / "vllm" / "__init__.py").is_file():
        return path
    if path.name == "vllm" and (path / "__init__.py").is_file():
        return path.parent
    raise SystemExit(f"vllm_depth.compat.audit: {path} is neither a wheel nor a directory holding the vllm package")


def _parse(text: str) -> tuple[str, ast.Module] | None:
    try:
        return text, ast.parse(text)
    except SyntaxError:
        return None


def _module_name(rel: str) -> str:
    name = rel[: -len(".py")].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def installed_vllm() -> str:
    """The installed ``vllm`` package's directory, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vllm_depth.compat.audit: no installed vllm package; pass --base WHEEL_OR_DIR")
    return list(spec.submodule_search_locations)[0]


# -- finding a definition ----------------------------------------------------------------------


@dataclass
class Found:
    module: str  # where it is defined
    raw: str  # the source segments as written
    text: str  # normalised: no docstrings, no comments
    line: int


def _statements(body: list[ast.stmt]):
    """The statements of a scope, including those under ``if`` / ``try`` blocks."""
    for node in body:
        yield node
        if isinstance(node, _BLOCKS):
            for block in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", [])),
                          getattr(node, "finalbody", [])):
                yield from _statements(block)


def _binds(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (*_FUNCS, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def _in_scope(body: list[ast.stmt], name: str) -> list[ast.AST]:
    return [node for node in _statements(body) if _binds(node, name)]


def _self_target(target: ast.expr, name: str) -> bool:
    return (isinstance(target, ast.Attribute) and target.attr == name
            and isinstance(target.value, ast.Name) and target.value.id == "self")


def _flat(targets: list) -> list:
    """Assignment targets, tuples and lists unpacked (``self.a, self.b = ...``)."""
    return [t for target in targets
            for t in (_flat(target.elts) if isinstance(target, (ast.Tuple, ast.List)) else [target])]


def _self_assignments(cls: ast.ClassDef, name: str) -> list[ast.AST]:
    """``self.<name> = ...`` in the class's methods (``__init__``'s when it has some)."""
    found: dict[str, list[ast.AST]] = {}
    for method in (n for n in cls.body if isinstance(n, _FUNCS)):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(_self_target(t, name) for t in _flat(targets)):
                found.setdefault(method.name, []).append(node)
    if "__init__" in found:
        return found["__init__"]
    return [node for nodes in found.values() for node in nodes]


def _dict_item(node: ast.AST, key: str) -> list[ast.AST]:
    value = getattr(node, "value", None)
    if not isinstance(value, ast.Dict):
        return []
    for k, v in zip(value.keys, value.values):
        if isinstance(k, ast.Constant) and k.value == key:
            item = ast.Dict(keys=[k], values=[v])
            item.lineno, item.col_offset = k.lineno, k.col_offset
            item.end_lineno, item.end_col_offset = v.end_lineno, v.end_col_offset
            return [item]
    return []


def _members(nodes: list[ast.AST], name: str) -> list[ast.AST]:
    out: list[ast.AST] = []
    for node in nodes:
        if isinstance(node, ast.ClassDef):
            out += _in_scope(node.body, name) or _self_assignments(node, name)
        else:
            out += _dict_item(node, name)
    return out


def _absolute(tree: Tree, module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if tree.is_package(module) else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _reexport(tree: Tree, module: str, body: list[ast.stmt], name: str) -> tuple[str, str] | None:
    """Where ``name`` comes from when ``module`` imports it (``from X import name``, or a lazy
    ``MODULE_ATTRS = {"name": ".x:attr"}`` table as in ``vllm/__init__.py``)."""
    for node in _statements(body):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _absolute(tree, module, node), alias.name
        if _binds(node, "MODULE_ATTRS"):
            for item in _dict_item(node, name):
                target = item.values[0]
                if isinstance(target, ast.Constant) and ":" in str(target.value):
                    rel, attr = str(target.value).split(":")
                    return (module + rel if rel.startswith(".") else rel), attr
    return None


def locate(tree: Tree, module: str, name: str, part: str, hops: int = 0) -> Found | None:
    """The definition of ``name`` (dotted: ``Class.method``, ``Class.attr``, ``table.key``) in ``module``,
    following re-exports."""
    parsed = tree.parsed(module)
    if parsed is None:
        return None
    text, mod = parsed
    first, *rest = name.split(".")
    nodes = _in_scope(mod.body, first)
    if not nodes:
        target = _reexport(tree, module, mod.body, first) if hops < 8 else None
        if target is None or target == (module, first):
            return None
        return locate(tree, target[0], ".".join([target[1], *rest]), part, hops + 1)
    for member in rest:
        nodes = _members(nodes, member)
        if not nodes:
            return None
    return Found(module, "\n".join(ast.get_source_segment(text, n) or "" for n in nodes),
                 "\n".join(normalise(n, part) for n in nodes), nodes[0].lineno)


# -- normalising --------------------------------------------------------------------------------


def _is_string(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _strip_docstrings(node: ast.AST) -> ast.AST:
    """Drop every bare string statement (docstrings, attribute docstrings) of every scope."""
    for scope in ast.walk(node):
        if isinstance(scope, _SCOPES):
            scope.body = [s for s in scope.body if not _is_string(s)] or [ast.Pass()]
    return node


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


def _fields_only(node: ast.ClassDef) -> ast.ClassDef:
    node.body = [s for s in node.body if isinstance(s, ast.AnnAssign)] or [ast.Pass()]
    return node


def _signature_only(node: ast.AST) -> ast.AST:
    if isinstance(node, _FUNCS):
        node.body = [ast.Expr(ast.Constant(...))]
    elif isinstance(node, ast.ClassDef):
        node.body = [_signature_only(s) for s in node.body if isinstance(s, _FUNCS)] or [ast.Pass()]
    return node


def normalise(node: ast.AST, part: str) -> str:
    """``part``: "source" (all of it), "signature" (def lines), "fields" (a dataclass's fields),
    "auto" (fields for a dataclass, else the source)."""
    node = _strip_docstrings(copy.deepcopy(node))
    if part == "signature":
        node = _signature_only(node)
    elif isinstance(node, ast.ClassDef) and (part == "fields" or (part == "auto" and _is_dataclass(node))):
        node = _fields_only(node)
    return ast.unparse(node)


# -- comparing ---------------------------------------------------------------------------------


@dataclass
class Result:
    entry: Entry
    status: str
    diff: list[str]
    base: Found | None
    new: Found | None


def diff_lines(a: str, b: str, name: str) -> list[str]:
    return list(difflib.unified_diff(a.splitlines(), b.splitlines(), f"base/{name}", f"new/{name}", lineterm=""))


def counts(diff: list[str]) -> str:
    added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
    return f"+{added} -{removed} lines"


_DEFINES = r"^\s*(?:async\s+def|def|class)\s+{0}\b|^\s*{0}\s*[:=]"


def moved(tree: Tree, entry: Entry, base: Found) -> Found | None:
    """The same name defined in another module of ``tree`` (the one closest to ``base``)."""
    pattern = re.compile(_DEFINES.format(re.escape(entry.name.split(".")[0])), re.M)
    candidates = []
    for module in tree.modules():
        if module == entry.module or not pattern.search(tree.read(tree.file_of(module))):
            continue
        found = locate(tree, module, entry.name, entry.part)
        if found is not None and found.module == module:
            candidates.append(found)
    return max(candidates, default=None,
               key=lambda f: difflib.SequenceMatcher(None, base.text, f.text).quick_ratio())


def compare(entry: Entry, base_tree: Tree, new_tree: Tree, new_label: str) -> Result:
    base = locate(base_tree, entry.module, entry.name, entry.part)
    if base is None:
        return Result(entry, "missing in base", [], None, None)
    new = locate(new_tree, entry.module, entry.name, entry.part)
    elsewhere = new is None
    if elsewhere:
        new = moved(new_tree, entry, base)
        if new is None:
            return Result(entry, f"missing in {new_label}", [], base, None)
    diff = diff_lines(base.text, new.text, entry.key)
    return Result(entry, _status(base, new, diff, elsewhere), diff, base, new)


def _status(base: Found, new: Found, diff: list[str], elsewhere: bool) -> str:
    if diff:
        what = f"changed ({counts(diff)})"
    else:
        what = "same" if base.raw == new.raw else "same (docstrings/comments differ)"
    if elsewhere:
        return f"moved to `{new.module}`: {what}"
    return what + (f"; defined in `{new.module}`" if new.module != base.module else "")


# -- reporting ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def row(result: Result, notes: dict[str, str], new_label: str) -> str:
    e = result.entry
    how = f"{e.use}; {e.handling}"
    if not result.status.startswith("same") and e.key in notes:
        how += f" **On {new_label}:** {notes[e.key]}"
    return f"| `{e.key}` | {_cell(result.status)} | {_cell(how)} |"


def table(results: list[Result], base_label: str, new_label: str, notes: dict[str, str]) -> str:
    head = [f"| function | {base_label} -> {new_label} | how the plugin handles it |", "| --- | --- | --- |"]
    return "\n".join(head + [row(r, notes, new_label) for r in results])


def summary(results: list[Result]) -> str:
    tally: dict[str, int] = {}
    for r in results:
        kind = r.status.split(" ")[0].rstrip(";")
        tally[kind] = tally.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))


def diffs(results: list[Result]) -> str:
    out = []
    for r in results:
        if not r.status.startswith("same"):
            out += [f"### {r.entry.key}: {r.status}", *(r.diff or ["(nothing to diff)"]), ""]
    return "\n".join(out)


def as_json(results: list[Result], notes: dict[str, str]) -> list[dict]:
    def where(found: Found | None):
        return None if found is None else {"module": found.module, "line": found.line}

    return [{"module": r.entry.module, "name": r.entry.name, "use": r.entry.use, "handling": r.entry.handling,
             "status": r.status, "note": notes.get(r.entry.key), "base": where(r.base), "new": where(r.new),
             "diff": r.diff} for r in results]


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", help="the vLLM release to audit: a wheel, or a directory holding the vllm package")
    p.add_argument("--base", help="what the plugin was written against: a wheel or a directory holding the "
                                  "vllm package (default: the installed vllm, found without importing it)")
    p.add_argument("--diff", action="store_true", help="print the unified diff of every entry that is not same")
    p.add_argument("--json", metavar="OUT", help="write every entry's result to OUT as JSON")
    return p.parse_args(argv)


def audit(base_tree: Tree, new_tree: Tree) -> tuple[list[Result], str, str]:
    base_label, new_label = _minor(base_tree.version()), _minor(new_tree.version())
    return [compare(e, base_tree, new_tree, new_label) for e in ENTRIES], base_label, new_label


def stale_notes(notes: dict[str, str]) -> list[str]:
    """Note keys that name no entry (a renamed or removed entry)."""
    keys = {e.key for e in ENTRIES}
    return sorted(k for k in notes if k not in keys)


def heading(base_tree: Tree, new_tree: Tree, argv: list[str]) -> str:
    """The line above the table: what was compared, and the command that compares it."""
    def what(tree: Tree) -> str:
        return f"the vllm {tree.version()} {'wheel' if tree.is_wheel else 'package'}"

    return (f"vLLM internals vllm-depth depends on: {what(base_tree)} against {what(new_tree)} (source read with "
            f"ast, vLLM not imported). Command: `python -m vllm_depth.compat.audit {' '.join(argv)}`")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    base_tree, new_tree = Tree(args.base or installed_vllm()), Tree(args.wheel)
    results, base_label, new_label = audit(base_tree, new_tree)
    notes = NOTES.get(new_label, {})
    for key in stale_notes(notes):
        print(f"vllm_depth.compat.audit: NOTES[{new_label!r}] names no entry: {key}", file=sys.stderr)
    print(heading(base_tree, new_tree, argv) + "\n")
    print(table(results, base_label, new_label, notes))
    print(f"\n{len(results)} entries: {summary(results)}")
    if args.diff:
        print("\n" + diffs(results))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(results, notes), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
