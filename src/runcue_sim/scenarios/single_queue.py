"""single_queue: independent work items, one service, no dependencies between them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import runcue

from ..fake import Sim

NAME = "single_queue"
DESCRIPTION = "independent tasks through one service (the plain rate-limited batch job)"
DETAILS = """\
Each item is one `call_api` work on service `api`. It is ready when its input exists and
stale until its output exists. Shows the service limits at work: concurrency, rate windows."""


def setup(cue: runcue.Cue, sim: Sim) -> Callable[[int], Awaitable[None]]:
    """Register the scenario on ``cue``; return the coroutine that submits one item."""
    store = sim.store
    sim.service(cue, "api")

    @cue.task("call_api", uses="api")
    async def call_api(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"response/{work.params['item']}")

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return store.exists(f"input/{work.params['item']}")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not store.exists(f"response/{work.params['item']}")

    async def submit(item: int) -> None:
        await cue.submit("call_api", {"item": item})

    return submit
