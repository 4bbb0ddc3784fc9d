"""The stages' needs as a graph: order, cycles and ancestors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lhorch.orchestrator.core.spec import Stage


def topological_order(stages: dict[str, Stage]) -> list[str]:
    """Stage names so that every stage comes after what it needs (ties in file order)."""
    order: list[str] = []
    done: set[str] = set()
    remaining = list(stages)
    while remaining:
        ready = [s for s in remaining if all(n in done for n in stages[s].needs)]
        if not ready:
            raise ValueError("the stages' needs form a cycle")
        for s in ready:
            order.append(s)
            done.add(s)
        remaining = [s for s in remaining if s not in done]
    return order


def find_cycle(stages: dict[str, Stage]) -> list[str] | None:
    """One cycle in the needs graph as a list of names (first repeated at the end), or None."""
    colour: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in stages[node].needs:
            if nxt not in stages:
                continue
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in colour:
                found = visit(nxt)
                if found:
                    return found
        colour[node] = 2
        path.pop()
        return None

    for name in stages:
        if name not in colour:
            found = visit(name)
            if found:
                return found
    return None


def ancestors(stages: dict[str, Stage], name: str) -> list[str]:
    """Every stage that `name` depends on, nearest first (breadth-first over needs)."""
    seen: list[str] = []
    frontier = list(stages[name].needs)
    while frontier:
        nxt: list[str] = []
        for s in frontier:
            if s not in seen:
                seen.append(s)
                nxt.extend(stages[s].needs)
        frontier = nxt
    return seen
