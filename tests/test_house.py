"""The package's structure, read from its source with ``ast``: no import circles, engine code that
never imports the offline tools, and function-local imports of the package only where they must be."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_depth"
ENGINE = ("models", "early_exit", "spec_decode", "core", "compat", "patches")
OFFLINE = ("vllm_depth.tools", "vllm_depth.cli", "matplotlib")
MAX_LAZY = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path):
    """(imported module, its statement's lines, whether inside a function) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    local_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (node.lineno, node.end_lineno), node.lineno in local_lines
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), (node.lineno, node.end_lineno), node.lineno in local_lines


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_among_the_packages_modules():
    assert cycles(graph()) == []


# The package's parts, lowest first: a module imports only from its own part or a lower one.  The
# root module (``vllm_depth``: register) sits above what it registers; the offline tools and the
# command line on top.
LAYERS = (
    ("paths", "request_args", "metrics"),
    ("compat",),
    ("early_exit",),
    ("config",),
    ("models",),
    ("spec_decode", "core"),
    ("patches",),
    ("", "entrypoints"),
    ("tools",),
    ("cli",),
)


def part(module: str) -> str:
    """The part of the package a module belongs to: its folder, or the top-level module itself
    (``""``: the package root)."""
    return module.split(".")[1] if "." in module else ""


def part_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        edges.setdefault(part(a), set()).update(part(b) for b in targets if part(b) != part(a))
    return edges


def test_no_import_circle_between_the_packages_parts():
    assert cycles(part_graph()) == []


def test_every_part_has_a_layer_and_no_import_goes_up_the_layers():
    level = {p: i for i, parts in enumerate(LAYERS) for p in parts}
    assert set(part_graph()) <= set(level), set(part_graph()) - set(level)
    up = [f"{name} -> {m}" for name, path in MODULES.items() for m, _, _ in imports(path)
          if m in MODULES and part(m) != part(name) and level[part(m)] > level[part(name)]]
    assert not up, up


def test_engine_code_never_imports_the_offline_tools():
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in ENGINE:
            bad += [f"{name}:{lines[0]} imports {m}" for m, lines, _ in imports(path)
                    if any(m == o or m.startswith(o + ".") for o in OFFLINE)]
    assert not bad, bad


def test_function_local_imports_of_the_package_are_few_and_say_why():
    local = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for m, (first, last), inside in imports(path):
            if inside and m.startswith("vllm_depth"):
                # a comment in the statement or on the line above it
                said = any("#" in line for line in lines[first - 1 : last]) or lines[first - 2].strip().startswith("#")
                local.append((f"{name}:{first} {m}", said))
    assert len({where.split(" ")[0] for where, _ in local}) <= MAX_LAZY, [w for w, _ in local]
    assert all(said for _, said in local), [w for w, said in local if not said]


# vLLM internals (runner, batch, forward context, op dispatch, compile cache, CPU GEMM) the plugin
# reaches only through compat/ and patches/, whose uses tests/test_vllm_compat.py guards
INTERNALS = ("input_batch", "kv_cache_config", "attn_groups", "model_runner", "get_forward_context",
             "_forward_method", "num_computed_tokens", "dispatch_cpu_unquantized_gemm", "set_model_tag",
             "build_metadata", "do_kv_cache_update", "cudagraph_runtime_mode")


def test_vllm_internals_are_reached_only_through_compat_and_patches():
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in ("compat", "patches"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            used = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if used in INTERNALS:
                bad.append(f"{name}:{node.lineno} {used}")
    assert not bad, bad


# The anatomy of a family's decoder layer (``models.families.Family``): its norms, projections and
# attention parts.  The engine reads them in models/ only (the layer loop, the K/V fill, the
# decoder), so a new family touches its family entry and nothing outside models/.
ANATOMY = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
           "post_feedforward_layernorm", "q_norm", "k_norm", "qkv_proj", "o_proj", "gate_up_proj", "down_proj",
           "rotary_emb", "self_attn")


def test_layer_anatomy_is_read_only_in_models():
    bad = []
    for name, path in MODULES.items():
        part = name.split(".")[1] if "." in name else ""
        if part not in ENGINE or part == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ANATOMY:
                bad.append(f"{name}:{node.lineno} {node.attr}")
    assert not bad, bad
