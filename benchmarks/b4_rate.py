"""B4: is ``rate="50/sec"`` exact, and does it use the whole rate?

No-op items on one service limited to 50 starts per second. Each handler records
``anyio.current_time()`` as it starts. A violation is a half-open window ``[t, t + 1 s)``,
``t`` at a recorded start, holding more than 50 starts. The steady rate is the starts after
the first 50 over the time between the 50th and the last start.

The claim is on handler starts, as the user (and the rate-limited API) sees them. The times of
the cue's ``started`` events, emitted as the scheduler admits a work into the rate window and
before the handler's task runs, are shown beside them: where the two disagree, the window is
kept at admission but not at the handler's start. (An event's time is read a few µs after the
admission itself, so a window exactly at the boundary can show 51 there.)

Baselines: ``aiolimiter.AsyncLimiter(50, 1)`` (a leaky bucket, asyncio only) and aiometer's
``max_per_second=50``. They run 150 items (a burst, then two seconds at the steady rate; 100
with ``--quick``) so the full suite stays short; the claim is on runcue only, the baselines show
what the usual tools do.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

import aiometer
import anyio
from aiolimiter import AsyncLimiter

import runcue

from ._harness import Backend, Row, Settings, interleave, median, on_loop

ID = "B4"
TITLE = 'rate="50/sec", no-op items'
LIMIT = 50
PERIOD = 1.0


@dataclass
class Shape:
    """How one run's starts sit against the limit."""

    starts: int
    most_in_window: int
    windows_over: int
    steady_rate: float


def shape(starts: list[float]) -> Shape:
    """Count over-full windows and the steady rate of one run's start times."""
    ordered = sorted(starts)
    most = 0
    over = 0
    for index, start in enumerate(ordered):
        count = bisect.bisect_left(ordered, start + PERIOD) - index
        most = max(most, count)
        over += count > LIMIT
    steady = math.nan
    if len(ordered) > LIMIT and ordered[-1] > ordered[LIMIT - 1]:
        steady = (len(ordered) - LIMIT) / (ordered[-1] - ordered[LIMIT - 1])
    return Shape(len(ordered), most, over, steady)


async def runcue_starts(items: int, admitted: list[float] | None = None) -> list[float]:
    """Handler start times of ``items`` items on a ``50/sec`` service.

    ``admitted`` (if given) receives the times of the ``started`` events, which the cue emits
    as it admits each work into the rate window, before the handler's task runs.
    """
    starts: list[float] = []

    async def call(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())

    def listen(event: runcue.WorkEvent) -> None:
        if event.kind == "started" and admitted is not None:
            admitted.append(event.time)

    async with runcue.Cue() as cue:
        cue.service("api", rate=f"{LIMIT}/sec")
        cue.task("call", uses="api")(call)
        if admitted is not None:
            cue.subscribe(listen)
        for index in range(items):
            await cue.submit("call", {"i": index})
        await cue.join()
    return starts


async def aiolimiter_starts(items: int) -> list[float]:
    """Start times under ``AsyncLimiter(50, 1)``, one task per item."""
    starts: list[float] = []
    limiter = AsyncLimiter(LIMIT, PERIOD)

    async def call(index: int) -> None:
        async with limiter:
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for index in range(items):
            tg.start_soon(call, index)
    return starts


async def aiometer_starts(items: int) -> list[float]:
    """Start times under ``aiometer.run_on_each(max_per_second=50)``."""
    starts: list[float] = []

    async def call(index: int) -> None:
        starts.append(anyio.current_time())

    await aiometer.run_on_each(call, list(range(items)), max_per_second=LIMIT / PERIOD)
    return starts


def _summary(shapes: list[Shape]) -> str:
    return (
        f"most starts in 1 s: {max(s.most_in_window for s in shapes)},"
        f" windows > {LIMIT}: {sum(s.windows_over for s in shapes)},"
        f" steady {median([s.steady_rate for s in shapes]):.2f}/s"
    )


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Run the three, interleaved (aiolimiter on asyncio only)."""
    items = 150 if settings.quick else 1_000
    peer_items = 100 if settings.quick else 150
    rounds = settings.rounds(full=5, quick=3)
    shapes: dict[str, list[Shape]] = {"runcue": [], "aiolimiter": [], "aiometer": []}
    admissions: list[Shape] = []

    def ours() -> list[float]:
        admitted: list[float] = []
        starts = on_loop(backend, lambda: runcue_starts(items, admitted))
        admissions.append(shape(admitted))
        return starts

    def recorder(name: str, collect: Callable[[], list[float]]) -> Callable[[], float]:
        def measure() -> float:
            found = shape(collect())
            shapes[name].append(found)
            return found.steady_rate

        return measure

    variants = {
        "runcue": recorder("runcue", ours),
        "aiometer": recorder(
            "aiometer", lambda: on_loop(backend, lambda: aiometer_starts(peer_items))
        ),
    }
    if backend == "asyncio":
        variants["aiolimiter"] = recorder(
            "aiolimiter", lambda: on_loop(backend, lambda: aiolimiter_starts(peer_items))
        )
    interleave(variants, rounds, warmup=0, say=settings.say)
    entries = shapes["runcue"]
    violations = sum(s.windows_over for s in entries)
    steady = median([s.steady_rate for s in entries])
    baselines = [f"aiometer ({peer_items} items): {_summary(shapes['aiometer'])}"]
    if shapes["aiolimiter"]:
        baselines.insert(0, f"aiolimiter ({peer_items} items): {_summary(shapes['aiolimiter'])}")
    else:
        baselines.insert(0, "aiolimiter: asyncio only")
    row = Row(
        ID,
        backend,
        f"{TITLE}, {items:,} items x {rounds} runs",
        f"handler entry: {_summary(entries)} (admission, from `started` events:"
        f" most in 1 s {max(s.most_in_window for s in admissions)},"
        f" windows > {LIMIT}: {sum(s.windows_over for s in admissions)})",
        "; ".join(baselines),
        f"steady {steady / LIMIT:.1%} of {LIMIT}/s",
        f"0 windows > {LIMIT}; steady ≥ 98 % of {LIMIT}/s",
        violations == 0 and steady >= 0.98 * LIMIT,
    )
    return [row]
