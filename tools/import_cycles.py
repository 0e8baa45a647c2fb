"""Print every import cycle among mailsvc's modules (function-level imports included); exit 1 if any.

Type-checking-only imports are not counted: they are never executed.

Why a script of our own beside import-linter's contracts: the closing notes of a refactor count cycles
before and after, and this prints each strongly connected group of modules, not only a verdict.
Run: ``.venv/bin/python tools/import_cycles.py``.
"""

from __future__ import annotations

import sys

import grimp


def cycles(package: str = "mailsvc") -> list[list[str]]:
    """Strongly connected groups (Tarjan) of two or more modules in the package's import graph."""
    # Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot form a cycle at
    # import time (mailsvc.services names its parts' types that way). Function-level imports count.
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.find_modules_directly_imported_by(node)):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def main() -> int:
    found = cycles()
    for group in found:
        print("cycle:", " <-> ".join(group))
    print(f"{len(found)} import cycle(s) in mailsvc")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
