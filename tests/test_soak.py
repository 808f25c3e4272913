"""Long runs stay flat: ``keep_finished=`` bounds what a cue remembers, so memory measured
with tracemalloc after warm-up does not grow with the number of items processed."""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Iterator

import anyio
import pytest

import runcue

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ITEMS = 60_000  # per backend: 120,000 in all (tracemalloc makes each item ~3x slower)
WAVES = 10
WARM_UP_WAVES = 2
KEEP = 1_000
FAILURE_RATE = 0.05
SLACK = 256 * 1024  # bytes of noise allowed on top of 20 % (allocator and loop internals)


@pytest.fixture
def traced() -> Iterator[None]:
    """Trace allocations for the test, and stop tracing afterwards."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_now() -> int:
    """Bytes currently allocated (and traced) after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def make_cue(keep: int | None) -> tuple[runcue.Cue, list[int]]:
    """A cue whose handler fails or sleeps as its params say; returns it and a call counter."""
    cue = runcue.Cue(keep_finished=keep, seed=1)
    cue.service("api", concurrent=64)
    calls = [0]

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> int:
        calls[0] += 1
        await anyio.sleep(work.params["delay"])
        if work.params["fail"]:
            raise ValueError(f"item {work.params['n']} fails")
        return int(work.params["n"])

    return cue, calls


async def test_keep_finished_keeps_memory_flat_over_a_long_run(
    anyio_backend: str, traced: None
) -> None:
    """100,000 items, 5 % failing, in waves: memory stays flat after warm-up; old ids are gone."""
    rng = random.Random(2024)
    cue, calls = make_cue(KEEP)
    per_wave = ITEMS // WAVES
    expected_failures = 0
    first_id = ""
    last_id = ""
    warm_up = 0
    readings: list[int] = []
    started = time.perf_counter()
    with anyio.fail_after(50):
        async with cue:
            n = 0
            for wave in range(WAVES):
                for _ in range(per_wave):
                    n += 1
                    draw = rng.random()
                    fail = draw < FAILURE_RATE
                    expected_failures += fail
                    delay = rng.choice((0.0001, 0.0005)) if draw > 0.98 else 0.0
                    last_id = await cue.submit("t", {"n": n, "fail": fail, "delay": delay})
                    if not first_id:
                        first_id = last_id
                await cue.join()
                assert len(cue._engine.finished) <= KEEP
                readings.append(traced_now())
                if wave == WARM_UP_WAVES - 1:
                    warm_up = readings[-1]
            end = traced_now()
            assert await cue.get(first_id) is None, "an evicted work is still remembered"
            with pytest.raises(runcue.WorkNotFound):
                await cue.wait(first_id)
            last = await cue.get(last_id)
            assert last is not None
            assert last.state.finished
    elapsed = time.perf_counter() - started
    stats = cue.stats()
    assert calls[0] == ITEMS
    assert (stats.submitted, stats.failed) == (ITEMS, expected_failures)
    assert stats.completed == ITEMS - expected_failures
    assert (stats.pending, stats.running, stats.cancelled) == (0, 0, 0)
    assert len(cue._engine.finished) == KEEP
    print(
        f"\nsoak[{anyio_backend}]: {ITEMS:,} items ({expected_failures:,} failed) in"
        f" {elapsed:.1f}s under tracemalloc; traced memory after warm-up"
        f" ({WARM_UP_WAVES * per_wave:,} items) {warm_up / 1024:.0f} KiB, at the end"
        f" {end / 1024:.0f} KiB ({(end - warm_up) / 1024:+.0f} KiB); per wave (KiB):"
        f" {[round(r / 1024) for r in readings]}"
    )
    assert end < warm_up * 1.2 + SLACK, (warm_up, end, readings)


async def test_the_memory_measure_sees_growth_when_nothing_is_evicted(
    anyio_backend: str, traced: None
) -> None:
    """A control: with keep_finished=None the same measure grows with every item."""
    cue, _calls = make_cue(None)
    per_wave = 5_000
    readings: list[int] = []
    with anyio.fail_after(30):
        async with cue:
            for wave in range(2):
                for n in range(per_wave):
                    await cue.submit("t", {"n": wave * per_wave + n, "fail": False, "delay": 0})
                await cue.join()
                readings.append(traced_now())
    growth = readings[1] - readings[0]
    print(f"\nsoak control[{anyio_backend}]: {growth / per_wave:.0f} bytes kept per item")
    assert growth > per_wave * 200, readings  # each remembered work costs far more than that
