"""The layers of core/ (docs/architecture.md): a lower layer never imports a higher one or the web app,
and no two modules import each other (directly or round a circle). Imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {
    "core.io": 0, "core.device": 0, "core.metrics": 0, "core.checkpoint": 0, "core.phantom": 0, "core.visual": 0,
    "core.losses": 0, "core.cache": 0,
    "core.data": 1, "core.backbones": 1,
    "core.models": 2,
    "core.training": 3,
    "core.inference": 4, "core.delineate": 4,
    "core.evaluation": 5, "core.annotate": 5,
    "core.cli": 6, "core.__main__": 6,
    "webapp": 7,
}


def layer(module: str) -> int | None:
    best = None
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, n)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every project module `path` imports (absolute or relative, at any depth of the file)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}   # `from . import x` names a module x
    known = {module_name(p) for p in ROOT.glob("core/**/*.py")} | {module_name(p) for p in ROOT.glob("webapp/**/*.py")}
    return {m for m in out if m in known and m != mod}


def graph() -> dict[str, set[str]]:
    files = list(ROOT.glob("core/**/*.py")) + list(ROOT.glob("webapp/**/*.py"))
    return {module_name(p): imports(p) for p in files}


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for mod, deps in graph().items():
        for d in deps:
            if layer(mod) is not None and layer(d) is not None and layer(d) > layer(mod):
                bad.append(f"{mod} -> {d}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    g = graph()
    # package __init__ files re-export their modules: an edge into a package's own children is not a circle
    g = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in g.items()}
    seen, stack, circles = set(), [], []

    def visit(m):
        if m in stack:
            circles.append(" -> ".join(stack[stack.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(g.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(g):
        visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_core_module_has_a_layer():
    missing = [m for m in graph() if m.startswith("core.") and layer(m) is None]
    assert not missing, missing


def test_no_function_over_80_lines():
    long = []
    for path in list(ROOT.glob("core/**/*.py")) + list(ROOT.glob("webapp/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
