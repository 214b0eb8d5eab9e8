"""Code-structure checks read from the source (no imports executed): the project's import graph, its cycles and
levels, layering rules, and function lengths. Used by tests/test_layers.py and bench/structure.py.

    >>> graph = import_graph(Path("."), ("classifier", "ui"))  # doctest: +SKIP
    >>> cycles(graph)  # doctest: +SKIP
    []

Imports inside functions count: hiding an import in a function body does not hide the dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def imported_names(module: str, path: Path) -> list[str]:
    """Every name `module` imports, absolute and dotted (`from a import b` gives both `a` and `a.b`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's `__init__` counts as the package)."""
    mods = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for n in imported_names(m, f):
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != m and not m.startswith(n + "."):  # a submodule importing its own package is not an edge
                graph[m].add(n)
    return graph


def external_imports(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the top-level names of everything it imports (streamlit, torch, ui, ...)."""
    mods = module_files(root, packages)
    return {m: {n.split(".")[0] for n in imported_names(m, f) if n} for m, f in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Module -> its level: 0 for a module importing no project module, else 1 + the highest level it imports.
    Modules on a cycle get -1 (the graph has no levels until the cycle is gone)."""
    on_cycle = {m for c in cycles(graph) for m in c}
    memo: dict[str, int] = {m: -1 for m in on_cycle}

    def level(m: str) -> int:
        if m not in memo:
            deps = [level(d) for d in graph[m]]
            memo[m] = -1 if any(d < 0 for d in deps) else (1 + max(deps) if deps else 0)
        return memo[m]

    for m in graph:
        level(m)
    return memo


def function_lengths(root: Path, packages: Iterable[str]) -> list[tuple[str, int, str | None]]:
    """(qualified function name, lines, docstring) for every function and method of `packages`."""
    out: list[tuple[str, int, str | None]] = []
    for m, f in module_files(root, packages).items():
        tree = ast.parse(f.read_text(encoding="utf-8"))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}.{child.name}"
                    out.append((name, child.end_lineno - child.lineno + 1, ast.get_docstring(child)))
                    visit(child, name)
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}.{child.name}")

        visit(tree, m)
    return out
