"""B11: token budgets on a virtual clock: 10,000 LLM-like calls under ``rate="500/min"`` and
a tokens window, each call's size random, estimated above its actual use and settled on it.

Run under trio with ``MockClock(autojump_threshold=0)`` (virtual time: the hours of limits pass
in seconds), so the row is the same on both backends' runs and is reported once, on trio. Each
handler sleeps 2 s (virtual), estimates ``size`` tokens and charges ``0.5-1.0 x size``.

Checked: no window of 60 s ever holds more than 500 starts or more than the token limit of
committed (actual) tokens, and the throughput reaches >= 98 % of the binding limit: the run
needs at least ``max(items / 500 per minute, total actual tokens / tokens per minute)``, and
it should take no more than 1/0.98 of that.
"""

from __future__ import annotations

import random
import time

import anyio

import runcue

from ._harness import Backend, Row, Settings

ID = "B11"
TITLE = "10,000 calls under 500/min and 40,000 tokens/min, random sizes, virtual clock"
ITEMS = 10_000
REQUESTS = 500
TOKENS = 40_000
TARGET = 0.98


def most_in_window(events: list[tuple[float, float]], period: float) -> float:
    """The most amount in any window ``(t - period, t]`` (two pointers over sorted events)."""
    events.sort()
    most = total = 0.0
    start = 0
    for when, amount in events:
        total += amount
        while events[start][0] + period <= when:
            total -= events[start][1]
            start += 1
        most = max(most, total)
    return most


def simulate(items: int, seed: int = 11) -> dict[str, float]:
    """One run on the virtual clock; the figures the row reports."""
    import trio
    from trio.testing import MockClock

    rng = random.Random(seed)
    sizes = [rng.randint(50, 300) for _ in range(items)]
    spends = [rng.uniform(0.5, 1.0) for _ in range(items)]
    starts: list[tuple[float, float]] = []
    tokens: list[tuple[float, float]] = []

    async def main() -> float:
        cue = runcue.Cue(seed=seed)
        cue.service(
            "llm", rate=f"{REQUESTS}/min", concurrent=200, costs={"tokens": f"{TOKENS}/min"}
        )

        @cue.task("ask", uses="llm", cost=lambda work: {"tokens": work.params["size"]})
        async def ask(work: runcue.WorkUnit) -> None:
            now = anyio.current_time()
            actual = round(work.params["size"] * work.params["spend"])
            starts.append((now, 1.0))
            tokens.append((now, float(actual)))
            work.charge(tokens=actual)
            await anyio.sleep(2.0)

        async with cue:
            began = anyio.current_time()
            for index in range(items):
                await cue.submit("ask", {"size": sizes[index], "spend": spends[index]})
            await cue.join()
            took = anyio.current_time() - began
        return took

    wall = time.perf_counter()
    elapsed: float = trio.run(main, clock=MockClock(autojump_threshold=0))
    wall = time.perf_counter() - wall
    spent = sum(amount for _, amount in tokens)
    bound = max(items / REQUESTS, spent / TOKENS) * 60.0
    return {
        "elapsed": elapsed,
        "wall": wall,
        "bound": bound,
        "binding": 1.0 if items / REQUESTS >= spent / TOKENS else 0.0,
        "most_starts": most_in_window(starts, 60.0),
        "most_tokens": most_in_window(tokens, 60.0),
        "spent": spent,
    }


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Once (on trio): the virtual clock is trio's."""
    if backend != "trio":
        return []
    items = 2_000 if settings.quick else ITEMS
    figures = simulate(items)
    settings.say(f"  {figures}")
    efficiency = figures["bound"] / figures["elapsed"]
    binding = "requests (500/min)" if figures["binding"] else f"tokens ({TOKENS:,}/min)"
    over = figures["most_starts"] > REQUESTS or figures["most_tokens"] > TOKENS
    return [
        Row(
            ID,
            "trio (virtual clock)",
            f"{items:,} calls under {REQUESTS}/min and {TOKENS:,} tokens/min, random sizes",
            f"{figures['elapsed'] / 60:.1f} virtual min ({figures['wall']:.1f} s of wall time);"
            f" most in any minute: {figures['most_starts']:.0f} starts,"
            f" {figures['most_tokens']:,.0f} tokens",
            f"binding limit: {binding}; bound {figures['bound'] / 60:.1f} min for"
            f" {figures['spent']:,.0f} tokens",
            f"{efficiency:.1%} of the binding limit",
            f"0 windows over either limit; ≥ {TARGET:.0%} of the binding limit",
            not over and efficiency >= TARGET,
        )
    ]
