"""``cue.check_graph()``: find stalls before they happen in declared dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._artifacts import artifact_key, describe
from ._work import WorkState

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._work import WorkUnit

__all__ = ["GraphReport", "check_graph"]


@dataclass(frozen=True)
class GraphReport:
    """What ``check_graph()`` found among pending work that declares its inputs."""

    orphans: tuple[tuple[WorkUnit, str], ...]
    """(work, input): a missing input that no pending or running work produces."""
    cycles: tuple[tuple[WorkUnit, ...], ...]
    """Pending work that waits, around a loop, for each other's outputs."""

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.orphans and not self.cycles

    def __str__(self) -> str:
        if self.ok:
            return "the dependency graph is sound: every missing input has a producer, no cycles"
        lines = [
            f"{work.task} {work.id} waits for {item}, which no pending or running work produces"
            for work, item in self.orphans
        ]
        lines += [
            "cycle: " + " -> ".join(f"{work.task} {work.id}" for work in cycle)
            for cycle in self.cycles
        ]
        return "\n".join(lines)


def check_graph(engine: Scheduler) -> GraphReport:
    """Orphan inputs and dependency cycles among pending declared work (asks ``exists()``)."""
    orphans: list[tuple[WorkUnit, str]] = []
    edges: dict[str, list[WorkUnit]] = {}
    nodes: dict[str, WorkUnit] = {}
    for work in list(engine.works.values()):
        if work.state is not WorkState.PENDING or not work._inputs:
            continue
        for item in work._inputs:
            producers = [
                p
                for p in engine.parking.producers.get(artifact_key(item), {}).values()
                if p is not work
            ]
            if not producers:
                if not item.exists():
                    orphans.append((work, describe(item)))
                continue
            nodes[work.id] = work
            for producer in producers:
                nodes[producer.id] = producer
                edges.setdefault(work.id, []).append(producer)
    return GraphReport(tuple(orphans), tuple(_cycles(nodes, edges)))


def _cycles(
    nodes: dict[str, WorkUnit], edges: dict[str, list[WorkUnit]]
) -> list[tuple[WorkUnit, ...]]:
    """Strongly connected components with a loop (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[tuple[WorkUnit, ...]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work_stack: list[tuple[str, int]] = [(root, 0)]
        while work_stack:
            node, position = work_stack.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if position < len(targets):
                work_stack.append((node, position + 1))
                target = targets[position].id
                if target not in index:
                    work_stack.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                looped = len(component) > 1 or any(t.id == node for t in edges.get(node, []))
                if looped:
                    found.append(tuple(nodes[member] for member in reversed(component)))
            if work_stack:
                parent = work_stack[-1][0]
                low[parent] = min(low[parent], low[node])
    return found
