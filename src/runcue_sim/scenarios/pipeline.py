"""pipeline: extract -> transform -> load for every item, linked only through artifacts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import runcue

from ..fake import Sim

NAME = "pipeline"
DESCRIPTION = "extract -> transform -> load; each stage waits for the previous stage's artifact"
DETAILS = """\
All three stages of an item are submitted at once; `is_ready` holds a stage until the artifact
of the stage before exists (input -> raw -> clean -> loaded). Services: `source`, `compute`,
`warehouse`. When a stage fails for good, the later stages of that item are cancelled: their
input can never appear."""

STAGES = ("extract", "transform", "load")
NEEDS = {"extract": "input", "transform": "raw", "load": "clean"}
MAKES = {"extract": "raw", "transform": "clean", "load": "loaded"}


def setup(cue: runcue.Cue, sim: Sim) -> Callable[[int], Awaitable[None]]:
    """Register the scenario on ``cue``; return the coroutine that submits one item."""
    store = sim.store
    work_ids: dict[int, dict[str, str]] = {}
    for service in ("source", "compute", "warehouse"):
        sim.service(cue, service)

    @cue.task("extract", uses="source")
    async def extract(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"raw/{work.params['item']}")

    @cue.task("transform", uses="compute")
    async def transform(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"clean/{work.params['item']}")

    @cue.task("load", uses="warehouse")
    async def load(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"loaded/{work.params['item']}")

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return store.exists(f"{NEEDS[work.task]}/{work.params['item']}")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not store.exists(f"{MAKES[work.task]}/{work.params['item']}")

    @cue.on_failure
    async def cancel_later_stages(work: runcue.WorkUnit, error: BaseException) -> None:
        if isinstance(error, runcue.StallTimeout):
            return  # a stall timeout fails every pending work itself
        item = work.params["item"]
        later = STAGES[STAGES.index(work.task) + 1 :]
        for stage in later:
            if stage in work_ids.get(item, {}):
                await cue.cancel(work_ids[item][stage])

    async def submit(item: int) -> None:
        work_ids[item] = {stage: await cue.submit(stage, {"item": item}) for stage in STAGES}

    return submit
