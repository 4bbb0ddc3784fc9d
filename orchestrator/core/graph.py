"""The stages' needs as a graph: order, cycles and ancestors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lhorch.orchestrator.core.spec import Stage


def topological_order(stages: dict[str, Stage]) -> list[str]:
    """Stage names so that every stage comes after what it needs (ties in file order).

    Stages come in rounds, as if run in waves: a stage's round is one more than the latest of its
    needs; within a round, file order. Linear in stages and needs (a 200,000-stage file, issue 17).
    """
    level: dict[str, int] = {}
    for name in stages:
        if name in level:
            continue
        # Depth-first without recursion: a chain of needs may be as long as the file. Each frame
        # holds its stage's known needs, filtered once (filtering on every return made it quadratic).
        stack: list[tuple[str, list[str], int]] = [(name, _known_needs(stages, name), 0)]
        on_path = {name}
        while stack:
            node, needs, i = stack[-1]
            if i < len(needs):
                stack[-1] = (node, needs, i + 1)
                nxt = needs[i]
                if nxt in on_path:
                    raise ValueError("the stages' needs form a cycle")
                if nxt not in level:
                    stack.append((nxt, _known_needs(stages, nxt), 0))
                    on_path.add(nxt)
                continue
            level[node] = 1 + max((level[n] for n in needs), default=-1)
            stack.pop()
            on_path.discard(node)
    position = {name: i for i, name in enumerate(stages)}
    return sorted(stages, key=lambda s: (level[s], position[s]))


def _known_needs(stages: dict[str, Stage], name: str) -> list[str]:
    return [n for n in stages[name].needs if n in stages]


def find_cycle(stages: dict[str, Stage]) -> list[str] | None:
    """One cycle in the needs graph as a list of names (first repeated at the end), or None."""
    colour: dict[str, int] = {}
    for start in stages:
        if start in colour:
            continue
        # Iterative depth-first search: the recursive one hit Python's recursion limit on long chains.
        path: list[str] = [start]
        cursor: list[int] = [0]
        colour[start] = 1
        while path:
            node = path[-1]
            needs = stages[node].needs
            if cursor[-1] < len(needs):
                nxt = needs[cursor[-1]]
                cursor[-1] += 1
                if nxt not in stages:
                    continue
                if colour.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if nxt not in colour:
                    colour[nxt] = 1
                    path.append(nxt)
                    cursor.append(0)
                continue
            colour[node] = 2
            path.pop()
            cursor.pop()
    return None


def ancestors(stages: dict[str, Stage], name: str) -> list[str]:
    """Every stage that `name` depends on, nearest first (breadth-first over needs)."""
    seen: dict[str, None] = {}  # ordered and O(1) membership
    frontier = list(stages[name].needs)
    while frontier:
        nxt: list[str] = []
        for s in frontier:
            if s not in seen:
                seen[s] = None
                nxt.extend(stages[s].needs)
        frontier = nxt
    return list(seen)
