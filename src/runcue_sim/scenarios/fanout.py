"""fanout: split each item into parts, process the parts in parallel, aggregate the results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import runcue

from ..fake import Sim

NAME = "fanout"
DESCRIPTION = "split -> parallel process (4 parts) -> aggregate; aggregate waits for all parts"
DETAILS = """\
`split` (service `storage`) writes 4 part artifacts; each `process` (service `workers`) is
ready once its part exists; `aggregate` (service `storage`) is ready once all 4 results exist.
A failed split cancels its parts and its aggregate; a failed part cancels its aggregate."""

PARTS = 4


def setup(cue: runcue.Cue, sim: Sim) -> Callable[[int], Awaitable[None]]:
    """Register the scenario on ``cue``; return the coroutine that submits one item."""
    store = sim.store
    part_ids: dict[int, list[str]] = {}
    aggregate_ids: dict[int, str] = {}
    sim.service(cue, "storage")
    sim.service(cue, "workers")

    @cue.task("split", uses="storage")
    async def split(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        for part in range(PARTS):
            store.put(f"part/{work.params['item']}.{part}")

    @cue.task("process", uses="workers")
    async def process(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"result/{work.params['item']}.{work.params['part']}")

    @cue.task("aggregate", uses="storage")
    async def aggregate(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"summary/{work.params['item']}")

    def results(item: int) -> list[str]:
        return [f"result/{item}.{part}" for part in range(PARTS)]

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        item = work.params["item"]
        if work.task == "split":
            return store.exists(f"input/{item}")
        if work.task == "process":
            return store.exists(f"part/{item}.{work.params['part']}")
        return all(store.exists(name) for name in results(item))

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        item = work.params["item"]
        if work.task == "split":
            return not all(store.exists(f"part/{item}.{part}") for part in range(PARTS))
        if work.task == "process":
            return not store.exists(f"result/{item}.{work.params['part']}")
        return not store.exists(f"summary/{item}")

    @cue.on_failure
    async def cancel_dependents(work: runcue.WorkUnit, error: BaseException) -> None:
        if isinstance(error, runcue.StallTimeout):
            return  # a stall timeout fails every pending work itself
        item = work.params["item"]
        if work.task == "split":
            for part_id in part_ids.get(item, []):
                await cue.cancel(part_id)
        if item in aggregate_ids:
            await cue.cancel(aggregate_ids[item])

    async def submit(item: int) -> None:
        await cue.submit("split", {"item": item})
        part_ids[item] = [
            await cue.submit("process", {"item": item, "part": part}) for part in range(PARTS)
        ]
        aggregate_ids[item] = await cue.submit("aggregate", {"item": item})

    return submit
