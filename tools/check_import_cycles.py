"""Fail when any two modules of hpcdl import each other, directly or through others.

import-linter's ``acyclic_siblings`` contract (pyproject.toml) sees cycles between
siblings; this also catches a package and its own submodule importing each other,
and counts imports made inside functions (they run too, only later). It prints
each cycle as the chain of imports that closes it, with file line numbers.

    .venv/bin/python tools/check_import_cycles.py          # run by `make lint-imports`
"""

from __future__ import annotations

import sys

import grimp

PACKAGE = "hpcdl"


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the package is deep enough to matter)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adj.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """One cycle through the component's first module, each import with its line."""
    first = component[0]
    inside = set(component)
    back = next(m for m in sorted(graph.find_modules_that_directly_import(first))
                if m in inside)
    chain = list(graph.find_shortest_chain(importer=first, imported=back) or (first, back))
    chain.append(first)
    lines = []
    for importer, imported in zip(chain, chain[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details[:2])
        lines.append(f"  {importer} -> {imported}  ({where})")
    return lines


def main() -> int:
    graph = grimp.build_graph(PACKAGE, include_external_packages=False)
    cycles = strongly_connected(graph)
    if not cycles:
        print(f"import cycles: none among {len(graph.modules)} modules of {PACKAGE}")
        return 0
    for component in cycles:
        print(f"import cycle among {len(component)} modules: {', '.join(component)}")
        print("\n".join(describe(graph, component)))
    print(f"{len(cycles)} import cycle(s) in {PACKAGE}: break each (docs/architecture.md)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
