"""dynamic: artifacts that expire, and get rebuilt when a consumer finds them too old."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import runcue

from ..fake import Sim

NAME = "dynamic"
DESCRIPTION = "quotes expire and are rebuilt on demand; reports need a fresh quote (ages)"
DETAILS = """\
Every 4 items share one quote (task `fetch`, service `market`); each item is a `report`
(service `reports`, twice as slow) that needs its input and a quote younger than 5 x latency.
`fetch` is stale when its quote is missing or too old, so a fetch of a fresh quote is skipped.
A report that finds its quote expired asks for a rebuild (a high-priority fetch; runcue does
not queue it twice while one is pending or running) and waits. A failed fetch cancels the
reports that wait for its quote."""

SHARED_BY = 4  # items per quote
REPORT_COST = 2.0  # a report takes this many times --latency
MIN_FRESH_FOR = 0.01  # seconds; keeps a zero --latency meaningful
REBUILD_PRIORITY = 0.9  # above the default 0.5: rebuilds jump the queue


def setup(cue: runcue.Cue, sim: Sim) -> Callable[[int], Awaitable[None]]:
    """Register the scenario on ``cue``; return the coroutine that submits one item."""
    store = sim.store
    fresh_for = max(5 * sim.workload.latency, MIN_FRESH_FOR)
    reports_of: dict[int, list[str]] = {}  # quote -> the report work ids that need it
    sim.service(cue, "market")
    sim.service(cue, "reports")

    def quote_is_fresh(quote: int) -> bool:
        age = store.age(f"quote/{quote}")
        return age is not None and age < fresh_for

    @cue.task("fetch", uses="market")
    async def fetch(work: runcue.WorkUnit) -> None:
        await sim.call(work)
        store.put(f"quote/{work.params['quote']}")

    @cue.task("report", uses="reports")
    async def report(work: runcue.WorkUnit) -> None:
        await sim.call(work, scale=REPORT_COST)
        store.put(f"report/{work.params['item']}")

    @cue.is_ready
    async def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "fetch":
            return True  # market data is always there
        quote = work.params["quote"]
        if not store.exists(f"input/{work.params['item']}"):
            return False
        if quote_is_fresh(quote):
            return True
        if store.exists(f"quote/{quote}"):
            # It expired before this report got its turn: ask for a rebuild, then wait.
            await cue.submit("fetch", {"quote": quote}, priority=REBUILD_PRIORITY)
        return False

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        if work.task == "fetch":
            return not quote_is_fresh(work.params["quote"])
        return not store.exists(f"report/{work.params['item']}")

    @cue.on_failure
    async def cancel_waiting_reports(work: runcue.WorkUnit, error: BaseException) -> None:
        if work.task == "fetch" and not isinstance(error, runcue.StallTimeout):
            for report_id in reports_of.get(work.params["quote"], []):
                await cue.cancel(report_id)

    async def submit(item: int) -> None:
        quote = item // SHARED_BY
        await cue.submit("fetch", {"quote": quote})
        report_id = await cue.submit("report", {"item": item, "quote": quote})
        reports_of.setdefault(quote, []).append(report_id)

    return submit
