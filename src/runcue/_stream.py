"""Streaming results: ``cue.map(task, inputs)`` submits one work per input, with backpressure,
and yields each work as it finishes (or in input order) -- aiometer's ``amap`` with runcue's
limits, checks and retries.

The shape is the one AnyIO and trio recommend over an async generator (which must never
yield inside a cancel scope or task group): a plain class that is an async iterator and an
async context manager, fed from a task in the cue's own task group.

- **The feeder** (``_Feed.feed``, a task of the cue) reads the inputs, sync or async, and
  submits each with ``cue.submit`` (so ``max_pending`` holds too) while fewer than
  ``window`` of its works are open: submitted and not yet yielded, whether they run, wait or
  are finished. Memory is bounded by the window, however slow the consumer.
- **Finished works** reach it synchronously: while a stream has works out, the cue tells it
  of every work that ends (``Reports.watch``); one of its own goes into a queue (or, with
  ``ordered=True``, under its input position), and a waiting consumer is woken.
- **The consumer** (``async for``) takes one at a time; taking frees a place in the window
  and wakes the feeder once a sixteenth of the window is free.

Every end of a stream goes through one of two doors. ``close()`` -- leaving ``async with``,
``aclose()``, or an error raised from ``async for`` -- cancels the feeder, waits for it to
end, and cancels every work the stream submitted that has not finished. A stream dropped
without closing (a plain ``async for`` left by ``break`` or a cancellation) is closed by its
``__del__``: the feeder is cancelled and, in its own task, cancels the stream's unfinished
works; if it had already read every input, those works run to their end instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._errors import CueStateError
from ._hooks import logger

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._cue import Cue
    from ._work import WorkUnit

__all__ = ["DEFAULT_WINDOW", "Inputs", "WorkStream", "open_stream"]

DEFAULT_WINDOW = 1_000  # works open at once when neither window= nor max_pending says
TAKE_SLICE = 256  # a consumer that never had to wait lets other tasks run this often

NEW, OPEN, CLOSED = "new", "open", "closed"
_END: Any = object()  # the inputs are exhausted

Inputs = Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]


class _Feed:
    """The state a stream shares with its feeder task and the cue's watcher."""

    __slots__ = (
        "abandoned",
        "borrowed",
        "consumer",
        "cue",
        "dedup",
        "error",
        "exhausted",
        "feeding",
        "inputs",
        "next_position",
        "open",
        "ordered",
        "priority",
        "producer",
        "ready",
        "ready_at",
        "resume_at",
        "scope",
        "state",
        "submitted",
        "taken",
        "task",
        "unfinished",
        "unwatch",
        "window",
    )

    def __init__(
        self,
        cue: Cue,
        task: str,
        inputs: Inputs,
        *,
        window: int,
        ordered: bool,
        priority: float | None,
    ) -> None:
        self.cue = cue
        self.task = task
        self.inputs = inputs
        self.window = window
        self.resume_at = window - max(1, window // 16)
        self.ordered = ordered
        self.priority = priority
        self.state = NEW
        self.abandoned = False
        # work._seq -> its input position(s)
        self.unfinished: dict[int, int | list[int]] = {}
        self.borrowed: set[int] = set()  # de-duplicated into live work this stream did not make
        self.ready: deque[WorkUnit] = deque()  # finished, not yet yielded (as they finish)
        self.ready_at: dict[int, WorkUnit] = {}  # ... by input position (ordered=True)
        self.next_position = 0  # ordered: the position to yield next
        self.submitted = 0  # inputs submitted
        self.open = 0  # submitted and not yet yielded: at most `window`
        self.taken = 0  # yielded since the consumer last waited
        self.exhausted = False  # every input was submitted
        self.error: BaseException | None = None  # raised from the consumer's next step
        self.scope: anyio.CancelScope | None = None  # the feeder's
        self.feeding: anyio.Event | None = None  # set when the feeder ended
        self.consumer: anyio.Event | None = None  # a waiting consumer's
        self.producer: anyio.Event | None = None  # the feeder's, waiting for the window
        self.dedup = cue._tasks[task].dedup  # equal inputs may share a live work
        self.unwatch: Callable[[], None] | None = None  # while the cue tells us of ends

    # ------------------------------------------------------------------ the feeder

    async def start(self) -> None:
        cue = self.cue
        if cue._launching:  # cue.start() was called; its run has not begun yet
            await cue._entered.wait()
        engine = cue._engine
        if self.state is not NEW:
            return
        if engine.tg is None or engine.closing:
            msg = (
                f"cue.map({self.task!r}, ...) needs a running cue: iterate it inside"
                " 'async with cue:' (or between cue.start() and cue.stop())"
            )
            raise CueStateError(msg)
        self.state = OPEN
        self.scope = anyio.CancelScope()
        self.feeding = anyio.Event()
        self.unwatch = engine.reports.watch(self.finished)
        engine.tg.start_soon(self.feed, name=f"runcue map {self.task!r}")

    async def feed(self) -> None:
        """The feeder task: submit every input while the window has room."""
        assert self.scope is not None and self.feeding is not None
        try:
            with self.scope:
                if await self.submit_all():
                    self.exhausted = True
        except anyio.get_cancelled_exc_class():
            if self.state is not CLOSED:
                self.error = CueStateError(
                    f"the cue stopped while cue.map({self.task!r}, ...) was submitting"
                )
            raise
        except Exception as exc:  # the inputs raised, or submit() refused one: the consumer's
            self.error = exc
        finally:
            self.feeding.set()
            self.wake_consumer()
            if self.abandoned:
                self.drop()
                self.settle()

    async def submit_all(self) -> bool:
        """Submit the inputs, one at a time while the window has room; False when the stream
        was closed before they were all submitted."""
        inputs = self.inputs
        is_async = isinstance(inputs, AsyncIterable)
        iterator: Any = aiter(inputs) if is_async else iter(inputs)  # type: ignore[arg-type]
        cue = self.cue
        submit = cue.submit
        task, priority, window, dedup = self.task, self.priority, self.window, self.dedup
        unfinished = self.unfinished
        while True:
            if self.open >= window or self.state is not OPEN:
                while self.open >= window and self.state is OPEN:
                    event = self.producer = anyio.Event()
                    await event.wait()
                if self.state is not OPEN:
                    return False
            params = await anext(iterator, _END) if is_async else next(iterator, _END)
            if params is _END:
                return True
            position = self.submitted
            if priority is None:
                await submit(task, params)
            else:
                await submit(task, params, priority=priority)
            # (no await from here on: the work cannot have ended yet)
            found = cue._found
            assert found is not None
            self.submitted = position + 1
            self.open += 1
            if dedup:
                self.add_twin(found._seq, position, made=found is cue._made)
            else:
                unfinished[found._seq] = position
            if self.state is not OPEN:
                self.drop()  # closed while the submission waited
                return False

    def add_twin(self, seq: int, position: int, *, made: bool) -> None:
        """Note a work of a ``dedup=True`` task: several inputs may share it, and it may be
        live work the stream did not make (then closing the stream does not cancel it)."""
        known = self.unfinished.get(seq)
        if known is None:
            self.unfinished[seq] = position
            if not made:  # a live twin the stream did not submit
                self.borrowed.add(seq)
        elif isinstance(known, list):
            known.append(position)
        else:
            self.unfinished[seq] = [known, position]

    # ------------------------------------------------------------------ the consumer

    def finished(self, work: WorkUnit) -> None:
        """The watcher: a work ended (maybe one of the stream's)."""
        positions = self.unfinished.pop(work._seq, None)
        if positions is None:
            return
        if self.borrowed:
            self.borrowed.discard(work._seq)
        if self.state is CLOSED:  # cancelled by close(), which waits for the last one
            if not self.unfinished:
                self.wake_consumer()
                self.settle()
            return
        if self.ordered:
            if isinstance(positions, list):
                for position in positions:
                    self.ready_at[position] = work
            else:
                self.ready_at[positions] = work
            if self.next_position not in self.ready_at:
                return
        elif isinstance(positions, list):
            self.ready.extend([work] * len(positions))
        else:
            self.ready.append(work)
        consumer = self.consumer
        if consumer is not None:
            self.consumer = None
            consumer.set()

    def wake_consumer(self) -> None:
        consumer = self.consumer
        if consumer is not None:
            self.consumer = None
            consumer.set()

    async def next(self) -> WorkUnit:
        if self.state is not OPEN:
            if self.state is CLOSED:
                raise StopAsyncIteration
            await self.start()
        while True:
            if self.error is not None:
                error, self.error = self.error, None
                await self.close()
                raise error
            if self.taken >= TAKE_SLICE:
                self.taken = 0
                await anyio.lowlevel.checkpoint()  # (and where a cancelled consumer learns it)
            if self.ordered:
                work = self.ready_at.pop(self.next_position, None)
                if work is not None:
                    self.next_position += 1
            else:
                work = self.ready.popleft() if self.ready else None
            if work is not None:
                self.taken += 1
                self.open -= 1
                producer = self.producer
                if producer is not None and self.open <= self.resume_at:
                    self.producer = None
                    producer.set()
                return work
            if self.state is CLOSED or (self.exhausted and not self.open):
                self.state = CLOSED
                self.settle()
                raise StopAsyncIteration
            self.taken = 0
            event = self.consumer  # (shared when several tasks read one stream)
            if event is None:
                event = self.consumer = anyio.Event()
            await event.wait()

    # ------------------------------------------------------------------ the ends

    async def close(self) -> None:
        """Stop feeding and wait for the feeder; cancel the stream's unfinished works and
        wait until they ended (shielded: this is cleanup, also under a cancelled caller)."""
        self.state = CLOSED
        if self.scope is not None:
            self.scope.cancel()
        self.wake_consumer()  # (another task's async for ends)
        with anyio.CancelScope(shield=True):
            if self.feeding is not None:
                await self.feeding.wait()
            self.drop()
            while self.unfinished:  # cancelled async handlers end at their next await
                event = self.consumer = anyio.Event()
                await event.wait()
        self.settle()

    def settle(self) -> None:
        """Closed, and no work of the stream left to end: the cue need not tell it more."""
        if self.state is CLOSED and not self.unfinished and self.unwatch is not None:
            self.unwatch()
            self.unwatch = None

    def drop(self) -> None:
        """Cancel every unfinished work the stream made (its twins it only forgets); drop
        what it holds. Cancelled works stay in ``unfinished`` until they ended."""
        engine = self.cue._engine
        for seq in list(self.unfinished):
            work = engine.works.get(seq)
            if work is None or seq in self.borrowed:
                del self.unfinished[seq]
            else:
                reason = f"cue.map({self.task!r}, ...) was closed before it ended"
                engine.outcomes.cancel_soon(work, reason)
        self.borrowed.clear()
        self.ready.clear()
        self.ready_at.clear()
        self.open = 0

    def abandon(self) -> None:
        """The stream was dropped unclosed: the feeder ends and, in its task, cleans up."""
        if self.state is not OPEN:
            return
        self.state = CLOSED
        self.abandoned = True
        if self.scope is not None:
            self.scope.cancel()
        self.settle()


class WorkStream:
    """The works of ``cue.map()``, each yielded once it has finished.

    Iterate it inside ``async with`` so that leaving the block, however it is left, cancels
    what the stream submitted and has not yielded::

        async with cue.map("ocr", ({"page": p} for p in pages)) as results:
            async for work in results:
                if work.state is runcue.WorkState.FAILED: ...

    A plain ``async for work in cue.map(...)`` works too; see the module ``_stream`` for what
    happens when it is left early. A yielded work has ended: ``completed`` (``work.skipped``
    when ``is_stale`` skipped it), ``failed`` (``work.exception``: its last attempt's error,
    after every retry) or ``cancelled``. Failures are yielded, not raised; what is raised
    from ``async for`` is an error of the stream itself: the inputs raised, ``submit()``
    refused one (a bad params value, ``SubmitDeadlock``), or the cue stopped
    (``CueStateError``). Then the stream closes first.
    """

    __slots__ = ("_feed",)

    def __init__(self, feed: _Feed) -> None:
        self._feed = feed

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Awaitable[WorkUnit]:
        return self._feed.next()

    async def __aenter__(self) -> Self:
        await self._feed.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._feed.close()

    async def aclose(self) -> None:
        """Close the stream (what leaving ``async with`` does); closing twice does nothing."""
        await self._feed.close()

    @property
    def submitted(self) -> int:
        """Inputs submitted so far."""
        return self._feed.submitted

    def __del__(self) -> None:
        try:
            self._feed.abandon()
        except Exception:  # pragma: no cover - the loop may be gone at interpreter exit
            logger.debug("runcue: could not stop an abandoned cue.map() stream", exc_info=True)

    def __repr__(self) -> str:
        feed = self._feed
        return (
            f"<runcue.WorkStream {feed.task!r} {feed.state}: {feed.submitted} submitted,"
            f" {feed.open} open, window {feed.window}>"
        )


def open_stream(
    cue: Cue, task: str, inputs: Inputs, *, window: int, ordered: bool, priority: float | None
) -> WorkStream:
    """A stream over ``inputs`` (validated by the Cue); it starts feeding when first used."""
    return WorkStream(_Feed(cue, task, inputs, window=window, ordered=ordered, priority=priority))
