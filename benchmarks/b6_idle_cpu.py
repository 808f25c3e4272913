"""B6: CPU an idle cue burns: started and empty, and holding 20,000 never-ready items.

``time.process_time()`` (every thread of the process) over a quiet window, as a share of one
core. The baseline is a bare event loop sleeping through the same window. The pending cue is
measured once every item was asked ``is_ready`` once and 0.5 s more passed, so the window sees
only the cue's background rechecks.
"""

from __future__ import annotations

import time

import anyio

import runcue

from ._harness import Backend, NeverReady, Row, Settings, interleave, median, on_loop

ID = "B6"
TITLE = "idle CPU"
PENDING = 20_000
SETTLE = 0.5


async def _window(seconds: float) -> float:
    begun_cpu, begun = time.process_time(), time.perf_counter()
    await anyio.sleep(seconds)
    return (time.process_time() - begun_cpu) / (time.perf_counter() - begun)


async def bare_loop(seconds: float) -> float:
    """Share of a core used by an event loop that only sleeps."""
    return await _window(seconds)


async def empty_cue(seconds: float) -> float:
    """Share of a core used by a started cue with nothing to do."""

    async def noop(work: runcue.WorkUnit) -> None:
        return None

    async with runcue.Cue() as cue:
        cue.service("svc", concurrent=100)
        cue.task("noop", uses="svc")(noop)
        await anyio.sleep(SETTLE)
        share = await _window(seconds)
    return share


async def pending_cue(seconds: float, items: int = PENDING) -> float:
    """Share of a core used by a cue holding ``items`` work units that are never ready."""
    async with runcue.Cue() as cue:
        pending = NeverReady(cue)
        await pending.submit(items)
        await pending.asked_at_least(items, timeout=60)
        await anyio.sleep(SETTLE)
        share = await _window(seconds)
        await cue.stop()  # cancels the pending work instead of joining it forever
    return share


def run(backend: Backend, settings: Settings) -> list[Row]:
    """The three, interleaved."""
    seconds = 2.0 if settings.quick else 3.0
    results = interleave(
        {
            "bare": lambda: on_loop(backend, lambda: bare_loop(seconds)),
            "empty": lambda: on_loop(backend, lambda: empty_cue(seconds)),
            "pending": lambda: on_loop(backend, lambda: pending_cue(seconds)),
        },
        settings.rounds(full=2, quick=1),
        warmup=0,
        say=settings.say,
    )
    bare, empty, pending = (median(results[name]) for name in ("bare", "empty", "pending"))
    return [
        Row(
            ID,
            backend,
            f"{TITLE}, started empty cue, {seconds:g} s window",
            f"{empty:.3%} of a core",
            f"bare sleeping loop {bare:.3%}",
            f"+{empty - bare:.3%}",
            "≤ 0.2 % of a core",
            empty <= 0.002,
        ),
        Row(
            ID,
            backend,
            f"{TITLE}, {PENDING:,} never-ready items, {seconds:g} s window",
            f"{pending:.2%} of a core",
            f"bare sleeping loop {bare:.3%}",
            f"+{pending - bare:.2%}",
            "≤ 5 % of a core",
            pending <= 0.05,
        ),
    ]
