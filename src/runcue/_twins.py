"""Twins: the de-duplication index of live work (a pure data structure, no awaits).

Only work that asked for de-duplication is indexed -- a ``key=``, or a task declared
``dedup=True`` -- so a cue whose work asks for none keeps no index at all. The index maps
the hash of a work's identity (its task and key, or its task and frozen params) to the live
work with that hash; equality is checked on the work itself (``same_work``), and hash
collisions chain in a list. A work leaves the index when it finishes: equal work submitted
after that is new work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["Twins", "same_work"]


def same_work(one: WorkUnit, other: WorkUnit) -> bool:
    """Whether two work units are the same work: the same key, or no key and the same task
    with equal params."""
    if one.task != other.task:
        return False
    if one.key is not None or other.key is not None:
        return bool(one.key == other.key)
    return bool(one.params == other.params)


class Twins:
    """Live work that asked for de-duplication, by the hash of its identity."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index: dict[int, WorkUnit | list[WorkUnit]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add(self, work: WorkUnit, dedup_key: Any) -> WorkUnit | None:
        """Index ``work`` under ``dedup_key``; returns its live twin instead when one exists
        (then nothing changes)."""
        index = self.index
        digest = hash(dedup_key)
        known = index.get(digest)
        if known is None:
            index[digest] = work
        else:
            chain = known if isinstance(known, list) else [known]
            for twin in chain:
                if same_work(twin, work):
                    return twin
            chain.append(work)
            index[digest] = chain
        work._dedup_key = digest
        return None

    def find(self, work: WorkUnit, dedup_key: Any) -> WorkUnit | None:
        """The live work that ``work`` would be de-duplicated into, if any."""
        if dedup_key is None:
            return None
        known = self.index.get(hash(dedup_key))
        for twin in known if isinstance(known, list) else (known,):
            if twin is not None and same_work(twin, work):
                return twin
        return None

    def forget(self, work: WorkUnit, digest: int) -> None:
        """A work that asked for de-duplication ended: equal work is new work again."""
        index = self.index
        known = index.get(digest)
        if known is work:
            del index[digest]
        elif isinstance(known, list) and work in known:
            known.remove(work)
            if len(known) == 1:
                index[digest] = known[0]
