"""Asking the user's ``is_ready`` and ``is_stale`` about a batch of work.

Sync checks are meant to be cheap (``Path.exists()``), so by default (``checks="auto"``) they
are called on the event loop, timed; once calls keep taking longer than ``SLOW_CHECK_SECONDS``
(three times, and at least 1 % of the calls -- a lone GC pause does not count), every later
batch moves to a worker thread, one thread hop per batch, so a slow check stops holding up
the loop. ``checks="thread"`` uses the thread from the
start and ``checks="inline"`` never does. Async checks are awaited. Every batch is bounded by
the cue's ``check_timeout``; a check that raises or times out leaves the work pending with a
``check_error`` that ``debug_blocked()`` shows and the ``runcue`` logger reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import anyio
import anyio.to_thread

from ._artifacts import artifact_key, declared_stale, describe
from ._hooks import Hooks, logger
from ._task import is_async_callable
from ._work import WorkUnit

__all__ = ["RUN", "SKIP", "CheckMode", "CheckRunner", "Verdict"]

CheckMode = Literal["auto", "inline", "thread"]
SLOW_CHECK_SECONDS = 0.002
CHECK_THREADS = 8
SLOW_CALLS_TO_SWITCH = 3  # ... and at least 1 % of the calls asked on the loop

RUN = ("run", "")
SKIP = ("skip", "")
NOT_READY = ("not_ready", "is_ready returned False")
Verdict = tuple[str, str]  # ("run" | "skip" | "not_ready" | "check_error", details)


def _inputs_ready_given(producers: dict[Any, dict[int, WorkUnit]]) -> Callable[[WorkUnit], bool]:
    """Declared readiness, Make's way: every input exists and no other live work is about
    to (re)build it. The inputs it waits for are kept on the work (``work._missing``)."""

    def inputs_ready(work: WorkUnit) -> bool:
        waiting = []
        for item in work._inputs:
            builders = producers.get(artifact_key(item)) if producers else None
            if builders and (len(builders) > 1 or work._seq not in builders):
                waiting.append(item)  # pending or running work will (re)write it: wait
            elif not item.exists():
                waiting.append(item)
        work._missing = waiting
        return not waiting

    return inputs_ready


def _outputs_stale(work: WorkUnit) -> bool:
    """Declared staleness: Make's rule over the work's inputs and outputs."""
    return declared_stale(work._inputs, work._outputs, work._task.max_age) is not None


_RAISED = {
    "inputs": "checking the inputs",
    "is_ready": "is_ready",
    "outputs": "checking the outputs",
    "is_stale": "is_stale",
}


def _judge(name: str, answer: Any, work: WorkUnit) -> Verdict | None:
    """What one answer of check ``name`` means for ``work``: None to go on to the next check,
    else the verdict (``verdict_now`` and ``evaluate`` share these rules)."""
    if answer is True:
        return None
    if answer is False:
        if name == "inputs":
            missing = ", ".join(describe(item) for item in work._missing[:3])
            return ("not_ready", f"waiting for input {missing}")
        if name == "is_ready":
            return NOT_READY
        return SKIP  # up to date: the user's is_stale cannot force a run
    return ("check_error", f"{_RAISED[name]} raised {answer!r}")


def _evaluate_sync(check: Callable[[WorkUnit], Any], works: Sequence[WorkUnit]) -> list[Any]:
    """Call a sync check on each work; an exception becomes that work's answer."""
    answers: list[Any] = []
    for work in works:
        try:
            answers.append(bool(check(work)))
        except Exception as exc:
            answers.append(exc)
    return answers


class CheckRunner:
    """Runs the two checks over batches of work and turns the answers into verdicts."""

    def __init__(self, hooks: Hooks, *, mode: CheckMode, timeout: float | None) -> None:
        if mode not in ("auto", "inline", "thread"):
            msg = f"checks must be 'auto', 'inline' or 'thread', got {mode!r}"
            raise ValueError(msg)
        self._hooks = hooks
        self._mode = mode
        self.timeout = math.inf if timeout is None else timeout  # also bounds async callbacks
        self._limiter: anyio.CapacityLimiter | None = None
        self._inline_calls = 0
        self._slow_calls = 0
        self.calls = {"is_ready": 0, "is_stale": 0, "inputs": 0, "outputs": 0}
        self.declarations = False  # set once a task declares inputs or outputs
        self.active = False  # False: no check and no declaration, every work simply runs
        self.producers: dict[Any, dict[int, WorkUnit]] = {}  # the scheduler's, shared
        self.errors = 0
        self.spent = 0.0  # seconds in checks asked by verdict_now() (see take_spent)
        self._some_async = False  # an async is_ready or is_stale: answers need awaiting
        self._inputs_check: Callable[[WorkUnit], bool] | None = None

    def rebind(self) -> None:
        """A new run starts (maybe on another event loop): loop-bound objects are made anew."""
        self._limiter = None

    @property
    def inline(self) -> bool:
        """True when :meth:`verdict_now` can answer: sync checks, asked on the loop."""
        return self._mode != "thread" and not self._some_async

    @property
    def runs_here(self) -> bool:
        """True when checks may be asked one work at a time from any task (not in a thread)."""
        return self._mode != "thread"

    def refresh(self) -> None:
        """Recompute :attr:`active` (a check was registered or a task declares artifacts)."""
        hooks = self._hooks
        self.active = self.declarations or hooks.is_ready is not None or hooks.is_stale is not None
        self._some_async = any(
            check is not None and is_async_callable(check)
            for check in (hooks.is_ready, hooks.is_stale)
        )

    def verdict_now(self, work: WorkUnit) -> Verdict:
        """One work's verdict, asked right here (only when :attr:`inline`).

        The same rules as :meth:`evaluate`, without a batch: the path a runner takes for the
        next work of its service, where a list, a coroutine and a second pass cost more than
        the user's check itself.
        """
        hooks = self._hooks
        declares = work._task.declares
        if declares:
            check = self._inputs_check
            if check is None:
                check = self._inputs_check = _inputs_ready_given(self.producers)
            verdict = _judge("inputs", self._ask_one("inputs", check, work), work)
            if verdict is not None:
                return verdict
        if hooks.is_ready is not None:
            verdict = _judge("is_ready", self._ask_one("is_ready", hooks.is_ready, work), work)
            if verdict is not None:
                return verdict
        if declares:
            verdict = _judge("outputs", self._ask_one("outputs", _outputs_stale, work), work)
            if verdict is not None:
                return verdict
        if hooks.is_stale is not None:
            verdict = _judge("is_stale", self._ask_one("is_stale", hooks.is_stale, work), work)
            if verdict is not None:
                return verdict
        return RUN

    def take_spent(self) -> float:
        """Seconds spent in inline checks since the last call (the scheduler spaces its
        sweeps by what asking costs)."""
        spent, self.spent = self.spent, 0.0
        return spent

    def _ask_one(self, name: str, check: Callable[[WorkUnit], Any], work: WorkUnit) -> Any:
        """:meth:`_ask` for one work, inline and sync."""
        self.calls[name] += 1
        begun = time.perf_counter()
        try:
            answer: Any = bool(check(work))
        except Exception as exc:
            answer = exc
            self._raised(name, work, exc)
        took = time.perf_counter() - begun
        self.spent += took
        if self._mode == "auto":
            self._inline_calls += 1
            if took > SLOW_CHECK_SECONDS:
                self._slow_call(name)
        return answer

    def _raised(self, name: str, work: WorkUnit, exc: Exception) -> None:
        self.errors += 1
        logger.warning(
            "runcue: %s raised for %s; the work stays pending and is asked again later",
            name,
            work,
            exc_info=exc,
        )

    def _slow_call(self, name: str) -> None:
        # One slow call may be a GC pause or the process being descheduled; a check that is
        # slow again and again is really blocking the loop.
        self._slow_calls += 1
        calls = self._inline_calls
        if self._slow_calls >= SLOW_CALLS_TO_SWITCH and self._slow_calls * 100 >= calls:
            self._mode = "thread"
            logger.info(
                "runcue: %s took over %.0f ms on the event loop %d times; sync checks"
                " now run in a worker thread",
                name,
                SLOW_CHECK_SECONDS * 1000,
                self._slow_calls,
            )

    async def evaluate(self, works: Sequence[WorkUnit]) -> list[Verdict]:
        """One verdict per work, in order."""
        verdicts: list[Verdict] = [RUN] * len(works)
        hooks = self._hooks
        todo = list(range(len(works)))
        steps = (
            ("inputs", _inputs_ready_given(self.producers), True),
            ("is_ready", hooks.is_ready, False),
            ("outputs", _outputs_stale, True),
            ("is_stale", hooks.is_stale, False),
        )
        for name, check, declared_only in steps:
            asked = [i for i in todo if works[i]._task.declares] if declared_only else todo
            if check is None or not asked:
                continue
            answers = await self._ask(name, check, [works[i] for i in asked])
            for i, answer in zip(asked, answers):
                verdict = _judge(name, answer, works[i])
                if verdict is not None:
                    verdicts[i] = verdict
            todo = [i for i in todo if verdicts[i] is RUN]
        return verdicts

    async def _ask(
        self, name: str, check: Callable[[WorkUnit], Any], works: list[WorkUnit]
    ) -> list[Any]:
        if self._mode != "thread" and not (self._some_async and is_async_callable(check)):
            return [self._ask_one(name, check, work) for work in works]
        self.calls[name] += len(works)
        if self._mode == "thread" and not is_async_callable(check):
            answers = await self._ask_in_thread(name, check, works)
        else:
            answers = await self._ask_async(name, check, works)
        for work, answer in zip(works, answers):
            if isinstance(answer, Exception):
                self._raised(name, work, answer)
        return answers

    async def _ask_in_thread(
        self, name: str, check: Callable[[WorkUnit], Any], works: list[WorkUnit]
    ) -> list[Any]:
        if self._limiter is None:
            # A few threads: a check that hangs keeps its thread (threads cannot be killed),
            # and the next batches must still get one.
            self._limiter = anyio.CapacityLimiter(CHECK_THREADS)
        with anyio.move_on_after(self.timeout):
            return await anyio.to_thread.run_sync(
                _evaluate_sync, check, works, abandon_on_cancel=True, limiter=self._limiter
            )
        error = TimeoutError(f"{name} did not answer within check_timeout={self.timeout:g}s")
        return [error] * len(works)

    async def _ask_async(
        self, name: str, check: Callable[[WorkUnit], Any], works: list[WorkUnit]
    ) -> list[Any]:
        answers: list[Any] = []
        for work in works:
            answer: Any = TimeoutError(
                f"{name} did not answer within check_timeout={self.timeout:g}s"
            )
            with anyio.move_on_after(self.timeout):
                try:
                    answer = bool(await check(work))
                except Exception as exc:
                    answer = exc
            answers.append(answer)
        return answers
