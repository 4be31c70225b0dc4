#!/usr/bin/env python3
"""Fail when the hato package has an import cycle (issue 11: no import cycles).

A cycle is a strongly connected component of more than one module in the graph of hato's
imports, as grimp (import-linter's graph builder) reads them: every `import` statement in a
module counts, at the top, inside a function, or under `if TYPE_CHECKING:`. A function-level
import hides a cycle from Python's import machinery, not from the reader: the two modules still
cannot be understood, tested or moved apart.

Known cycles that someone is removing right now are listed in KNOWN with that someone's name.
They are reported but do not fail the check; any other cycle, or a known one that grew (a
module that is not in its entry), fails it. An entry whose cycle is gone is reported too, so
it can be deleted. Usage: `scripts/check_cycles.py` (exit 0 clean, 1 a cycle).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp

PACKAGE = "hato"

# Cycles being removed, each with who removes it (issue 11). A found cycle is "known" when each
# of its modules matches a pattern of one entry ("pkg.*": the modules under pkg). Delete an
# entry when its cycle is gone; add none.
KNOWN: dict[str, tuple[str, ...]] = {}


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return module.startswith(pattern[:-1])
    return module == pattern


def import_graph(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of `package` it imports."""
    graph = grimp.build_graph(package, cache_dir=None)
    return {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m in graph.modules}
        for module in graph.modules
    }


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def owner(
    component: Iterable[str], known: Mapping[str, tuple[str, ...]] | None = None
) -> str | None:
    for who, patterns in (KNOWN if known is None else known).items():
        if all(any(_matches(m, p) for p in patterns) for m in component):
            return who
    return None


def main() -> int:
    found = cycles(import_graph(PACKAGE))
    failed = False
    still: set[str] = set()
    for component in found:
        who = owner(component)
        if who is None:
            failed = True
            print(f"import cycle ({len(component)} modules): {', '.join(component)}")
        else:
            still.add(who)
            print(f"known import cycle, {who} removes it: {', '.join(component)}")
    for who in sorted(set(KNOWN) - still):
        print(f"KNOWN[{who!r}] has no cycle left: delete the entry")
    if failed:
        print("check_cycles: break the cycle (move what both need into a third module)")
        return 1
    print(f"check_cycles: no new import cycles in {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
