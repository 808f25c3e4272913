"""Streaming results (``cue.map``): every input submitted with backpressure, every work
yielded once it has finished -- as they finish or in input order -- failures yielded, and
every early end (break, a cancel scope, an error) leaving the cue clean."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest

import runcue
from runcue import WorkState
from test_cancel import assert_consistent as assert_ledger

pytestmark = pytest.mark.anyio


def assert_clean(cue: runcue.Cue) -> None:
    """Nothing pending or running, the ledger adds up, no watcher left behind."""
    assert_ledger(cue)
    assert (cue.stats().pending, cue.stats().running) == (0, 0)
    assert not cue._engine.reports.watchers


async def drain(stream: runcue.WorkStream) -> list[runcue.WorkUnit]:
    """Every work of a stream, inside ``async with``."""
    async with stream:
        return [work async for work in stream]


class Counted:
    """A params generator that counts what was read from it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0

    def __iter__(self) -> Iterator[dict[str, int]]:
        for n in range(self.count):
            self.read += 1
            yield {"n": n}


def reversed_finish(cue: runcue.Cue, count: int) -> None:
    """A task "rev" whose works finish last input first (each waits for the next one)."""
    done = [anyio.Event() for _ in range(count)]
    cue.service("wide", concurrent=count)

    @cue.task("rev", uses="wide")
    async def rev(work: runcue.WorkUnit) -> int:
        n = int(work.params["n"])
        if n + 1 < count:
            await done[n + 1].wait()
        done[n].set()
        return n


async def test_map_yields_every_work_as_it_finishes(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Unordered: each input's work is yielded once, finished, in the order they finished."""
    cue = make_cue()
    reversed_finish(cue, 5)
    with anyio.fail_after(10):
        async with cue:
            seen = [work async for work in cue.map("rev", ({"n": n} for n in range(5)))]
    assert [work.result for work in seen] == [4, 3, 2, 1, 0]
    assert all(work.state is WorkState.COMPLETED for work in seen)
    assert_clean(cue)


async def test_map_ordered_yields_in_input_order(make_cue: Callable[..., runcue.Cue]) -> None:
    """ordered=True: the works come in input order although they finished the other way."""
    cue = make_cue()
    reversed_finish(cue, 5)
    with anyio.fail_after(10):
        async with cue, cue.map("rev", [{"n": n} for n in range(5)], ordered=True) as results:
            seen = [work.result async for work in results]
    assert seen == [0, 1, 2, 3, 4]
    assert_clean(cue)


async def test_map_yields_failures_after_their_retries(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A failed work is yielded (state failed, its exception) after its last attempt; a work
    that succeeds on a retry is yielded once, completed; skipped work is yielded too."""
    cue = make_cue()
    cue.service("s", concurrent=4)

    @cue.task("flaky", uses="s", retry=2, backoff=runcue.Backoff(base=0.001))
    async def flaky(work: runcue.WorkUnit) -> int:
        n = int(work.params["n"])
        if n % 3 == 0 or (n % 3 == 1 and work.attempt == 1):
            raise ValueError(f"bad {n} on attempt {work.attempt}")
        return n

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return int(work.params["n"]) != 8

    with anyio.fail_after(10):
        async with cue, cue.map("flaky", ({"n": n} for n in range(9)), ordered=True) as results:
            seen = [work async for work in results]
    assert [work.params["n"] for work in seen] == list(range(9))
    for work in seen:
        n = int(work.params["n"])
        if n == 8:
            assert work.skipped
        elif n % 3 == 0:
            assert work.state is WorkState.FAILED
            assert isinstance(work.exception, ValueError)
            assert work.attempt == 2
        else:
            assert work.state is WorkState.COMPLETED
            assert work.result == n
            assert work.attempt == (2 if n % 3 == 1 else 1)
    assert cue.stats().retried == 6
    assert_clean(cue)


async def test_map_keeps_at_most_window_works_open(make_cue: Callable[..., runcue.Cue]) -> None:
    """window=3: never more than three of the stream's works submitted and not yet yielded,
    however many could run; the inputs are read lazily."""
    cue = make_cue()
    cue.service("wide", concurrent=50)
    inputs = Counted(40)
    most_open = 0

    @cue.task("t", uses="wide")
    async def t(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0)

    with anyio.fail_after(10):
        async with cue, cue.map("t", inputs, window=3) as results:
            yielded = 0
            async for _ in results:
                yielded += 1
                stats = cue.stats()
                most_open = max(most_open, stats.submitted - stats.completed + 1)
                assert inputs.read <= yielded + 3 + 1  # one read ahead at most
    assert yielded == 40
    assert most_open <= 3
    assert_clean(cue)


async def test_map_window_defaults_to_max_pending(make_cue: Callable[..., runcue.Cue]) -> None:
    """Under Cue(max_pending=N) the stream keeps at most N works open (so never more than N
    pending)."""
    cue = make_cue(max_pending=10)
    cue.service("s", concurrent=2)

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0)

    with anyio.fail_after(20):
        async with cue:
            stream = cue.map("t", ({"n": n} for n in range(500)))
            assert "window 10" in repr(stream)
            count = 0
            async for _ in stream:
                count += 1
                assert stream.submitted - count < 10  # open, besides this one
    assert count == 500
    assert_clean(cue)


async def test_map_reads_async_iterables(make_cue: Callable[..., runcue.Cue]) -> None:
    """An async iterable of params (here an async generator that awaits) is read lazily."""
    cue = make_cue()
    cue.service("s", concurrent=3)

    @cue.task("double", uses="s")
    def double(work: runcue.WorkUnit) -> int:  # a sync handler, in a worker thread
        return 2 * int(work.params["n"])

    async def inputs() -> AsyncIterator[dict[str, int]]:
        for n in range(20):
            await anyio.lowlevel.checkpoint()
            yield {"n": n}

    with anyio.fail_after(10):
        async with cue, cue.map("double", inputs(), window=4) as results:
            seen = sorted([work.result async for work in results])
    assert seen == [2 * n for n in range(20)]
    assert_clean(cue)


def first_done_rest_held(cue: runcue.Cue) -> None:
    """A task "t" whose first work returns at once and every other one waits for good."""
    cue.service("s", concurrent=2)
    never = anyio.Event()

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> int:
        if int(work.params["n"]) > 0:
            await never.wait()
        return int(work.params["n"])


def assert_stopped_after_the_first(cue: runcue.Cue, inputs: Counted, read: int) -> None:
    """The stream read no further, and cancelled all it submitted but the first work."""
    assert inputs.read == read <= 10  # the window of 8, and one read ahead
    stats = cue.stats()
    assert stats.completed == 1
    assert stats.cancelled == stats.submitted - 1
    assert_clean(cue)


async def test_breaking_out_of_async_with_cancels_what_was_not_yielded(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Leaving ``async with cue.map(...)`` early stops reading the inputs, cancels the works
    not yet finished and waits for them: no task and no work is left behind."""
    cue = make_cue()
    first_done_rest_held(cue)
    inputs = Counted(1_000)
    with anyio.fail_after(10):
        async with cue:
            async with cue.map("t", inputs, window=8) as results:
                async for work in results:
                    assert work.result == 0
                    break
            read = inputs.read
            assert_clean(cue)  # at once: leaving the block waited for the cancelled works
            await anyio.wait_all_tasks_blocked()
            assert_stopped_after_the_first(cue, inputs, read)


async def test_a_plain_async_for_left_by_break_stops_feeding(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Without ``async with``, a stream dropped by ``break`` stops at once (garbage
    collected): its feeder ends and its unfinished works are cancelled."""
    cue = make_cue()
    first_done_rest_held(cue)
    inputs = Counted(1_000)
    with anyio.fail_after(10):
        async with cue:
            async for work in cue.map("t", inputs, window=8):
                assert work.result == 0
                break
            gc.collect()
            await cue.join()  # the stream's works were cancelled: nothing left to wait for
            read = inputs.read
            await anyio.wait_all_tasks_blocked()
            assert_stopped_after_the_first(cue, inputs, read)


async def test_a_cancelled_consumer_leaves_the_cue_clean(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A cancel scope around the stream (cancelled from inside the loop) ends it like a
    break: the works it had open are cancelled, and the cue runs on."""
    cue = make_cue()
    cue.service("s", concurrent=4)
    release = anyio.Event()

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> int:
        if int(work.params["n"]) >= 2:
            await release.wait()
        return int(work.params["n"])

    with anyio.fail_after(10):
        async with cue:
            with anyio.CancelScope() as scope:
                async with cue.map("t", ({"n": n} for n in range(100)), ordered=True) as results:
                    async for work in results:
                        if work.result == 1:
                            scope.cancel()
                            await anyio.sleep_forever()
            assert scope.cancelled_caught
            assert_clean(cue)
            assert await cue.wait(await cue.submit("t", {"n": 0})) == 0


async def test_an_input_that_raises_ends_the_stream_with_its_error(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """The inputs' own exception comes out of ``async for``; the stream's unfinished works
    are cancelled first."""
    cue = make_cue()
    cue.service("s", concurrent=2)
    release = anyio.Event()

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        await release.wait()

    def inputs() -> Iterator[dict[str, int]]:
        yield {"n": 0}
        yield {"n": 1}
        raise LookupError("the input file is truncated")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(LookupError, match="truncated"):
                await drain(cue.map("t", inputs()))
            assert cue.stats().cancelled == 2
            assert_clean(cue)


async def test_bad_params_from_the_inputs_raise_from_the_stream(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A params value that submit() refuses ends the stream with submit()'s error."""
    cue = make_cue()
    cue.service("s")

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        return None

    with anyio.fail_after(10):
        async with cue:
            bad = [{"n": 0}, ["not", "a", "mapping"]]
            with pytest.raises(TypeError, match="params must be a mapping"):
                await drain(cue.map("t", bad))  # type: ignore[arg-type]
            assert_clean(cue)


async def test_a_cue_stopping_under_a_stream_ends_it_with_cue_state_error(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """stop() while a stream is being fed: the consumer gets CueStateError, not a hang."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    started = anyio.Event()

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        started.set()
        await anyio.sleep_forever()

    errors: list[BaseException] = []

    async def consume() -> None:
        try:
            async for _ in cue.map("t", ({"n": n} for n in range(100)), window=5):
                pass
        except runcue.CueStateError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        cue.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await started.wait()
            await cue.stop(timeout=0)
    assert len(errors) == 1
    assert "stopped" in str(errors[0])
    assert_clean(cue)


async def test_map_yields_a_deduplicated_work_once_per_input(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Equal inputs of a dedup=True task share one work while it is live; the stream yields
    it once per input (in input order with ordered=True)."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    gate = anyio.Event()

    @cue.task("d", uses="s", dedup=True)
    async def d(work: runcue.WorkUnit) -> object:
        await gate.wait()
        return work.params["n"]

    with anyio.fail_after(10):
        async with cue:
            inputs = [{"n": 1}, {"n": 2}, {"n": 1}, {"n": 3}]
            async with cue.map("d", inputs, ordered=True) as results:
                gate.set()
                seen = [work async for work in results]
    assert [work.result for work in seen] == [1, 2, 1, 3]
    assert seen[0] is seen[2]
    assert cue.stats().submitted == 3
    assert_clean(cue)


async def test_map_refuses_bad_arguments_where_it_is_called(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """An unknown task, inputs that are not an iterable of mappings, a bad window or priority
    are refused by map() itself; iterating a stream of a cue that is not running raises
    CueStateError."""
    cue = make_cue()
    cue.service("s")

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        return None

    with pytest.raises(runcue.UnknownTaskError, match="Unknown task 'nope'"):
        cue.map("nope", [{}])
    with pytest.raises(TypeError, match="iterable"):
        cue.map("t", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="iterable"):
        cue.map("t", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        cue.map("t", [{}], window=0)
    with pytest.raises(ValueError, match="priority"):
        cue.map("t", [{}], priority=2.0)
    with pytest.raises(runcue.CueStateError, match="running cue"):
        await drain(cue.map("t", [{}]))


async def test_several_tasks_may_read_one_stream(make_cue: Callable[..., runcue.Cue]) -> None:
    """Two tasks iterating the same stream share its works: each is yielded exactly once."""
    cue = make_cue()
    cue.service("s", concurrent=3)

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> int:
        await anyio.sleep(0)
        return int(work.params["n"])

    seen: list[list[int]] = [[], []]

    async def read(stream: runcue.WorkStream, into: list[int]) -> None:
        async for work in stream:
            into.append(work.result)
            await anyio.sleep(0)

    with anyio.fail_after(10):
        async with (
            cue,
            cue.map("t", ({"n": n} for n in range(200)), window=7) as results,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(read, results, seen[0])
            tg.start_soon(read, results, seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(200))
    assert seen[0] and seen[1]
    assert_clean(cue)
