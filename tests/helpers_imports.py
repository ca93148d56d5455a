"""The import graph of pipeline/, read from the source with ast (nothing is imported).

Every import statement counts, at module level or inside a function: a stage runs its lazy imports
too, and a lazy import back up the tree is still a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file of every module under pipeline/ (a package by its __init__.py)."""
    found = {}
    for path in sorted((repo / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(repo).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def direct_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The pipeline modules `name` imports. `from pkg import sub` is an import of the submodule
    only (the package's __init__ runs first either way, as for every import below it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            out.update(subs)
            if base in known and len(subs) < len(node.names):
                out.add(base)  # a name defined in the module itself
    out.discard(name)
    return out


def graph(repo: Path = REPO) -> dict[str, set[str]]:
    known = modules(repo)
    return {name: direct_imports(name, path, known) for name, path in known.items()}


def closure(entries: list[str], edges: dict[str, set[str]]) -> set[str]:
    """Every module that running `entries` may import: their imports, transitively, and the
    packages (__init__.py) above each."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]
        todo.extend(edges.get(name, ()))
        todo.extend(p for p in parents if p in edges)
    return seen


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan's strongly
    connected components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def files(names: set[str], repo: Path = REPO) -> set[str]:
    """Repo-relative paths (as the Makefile spells them) of module names."""
    known = modules(repo)
    return {known[n].relative_to(repo).as_posix() for n in names}
