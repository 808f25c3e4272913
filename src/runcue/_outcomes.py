"""Outcomes: how an attempt (or a pending work) ends -- completed, skipped, retried, paused,
failed, cancelled -- and the bookkeeping every end shares (``finish``): counts, the indexes
that knew the work, the history of finished work, waiters, dependents, listeners.

The order within one end is fixed: the cue's own state first (so a callback or a listener
sees a consistent cue), then listeners, then the user's callback.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._artifacts import Snapshot, declared_stale, describe
from ._errors import RateLimited, WorkCancelled
from ._hooks import logger
from ._queues import DELAYED, NOWHERE, QUEUED, is_parked
from ._work import WorkState, WorkUnit

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._service import Service
    from ._task import TaskSpec

__all__ = ["Outcomes"]


class Outcomes:
    """Ends of attempts and of work, for the scheduler."""

    def __init__(self, engine: Scheduler) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ attempts

    def attempt_ended(self, service: Service) -> None:
        """A handler returned or raised: it no longer runs."""
        engine = self.engine
        engine.running -= 1
        service.running -= 1
        engine.sweeps.handler_finished = True
        if engine.watch_stalls:
            engine.last_progress = engine.clock()
            engine.stall_warned = False
        if engine.running <= 1:
            engine.reports.check_idle()

    def completed(
        self,
        work: WorkUnit,
        service: Service,
        result: Any,
        duration: float,
        now: float | None = None,
    ) -> None:
        """Bookkeeping for an attempt that returned (its on_complete is the caller's)."""
        self.attempt_ended(service)
        service.completed += 1
        self.engine.completed += 1
        self.finish(work, WorkState.COMPLETED, result, None, duration, now)

    async def conclude(
        self,
        work: WorkUnit,
        service: Service,
        result: Any,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """Report one attempt's outcome: complete, retry, pause, fail or cancel."""
        engine = self.engine
        hooks = engine.hooks
        reports = engine.reports
        if error is None and not work._cancel_requested:
            self.completed(work, service, result, duration)
            hook = hooks.on_complete
            if hook is not None:
                if "on_complete" in reports.async_hooks:
                    if service.queue.live:
                        engine.wake()  # its slot is free; the callback must not keep it idle
                    await reports.report("on_complete", hook, work, result, duration)
                else:
                    reports.call("on_complete", hook, work, result, duration)
            return
        if reports.async_hooks and service.queue.live:
            engine.wake()  # its slot is free; an async callback below must not keep it idle
        spec: TaskSpec = work._task
        self.attempt_ended(service)
        if work._cancel_requested or error is None:
            self.cancelled(work, f"work {work.id} ({work.task}) was cancelled while it ran")
            return
        if isinstance(error, RateLimited):
            now = engine.clock()
            service.pause.pause(now + error.retry_after)
            logger.info(
                "runcue: service %r paused for %.3gs (RateLimited from %s)",
                service.name,
                error.retry_after,
                work,
            )
            if reports.listeners:
                reports.emit("paused", work, f"service paused {error.retry_after:.3g}s")
            if self.back_to_pending(work, now):
                engine.enqueue(work, now)
            engine.wake()
            return
        if spec.should_retry(error, work.attempt) and not engine.closing:
            await self._retry(work, service, error, duration)
            return
        service.failed += 1
        engine.failed += 1
        self.finish(work, WorkState.FAILED, exception=error, duration=duration)
        if hooks.on_failure is not None:
            await reports.report("on_failure", hooks.on_failure, work, error)

    async def _retry(
        self, work: WorkUnit, service: Service, error: BaseException, duration: float
    ) -> None:
        engine = self.engine
        delay = work._task.backoff.delay(work.attempt, engine.rng)
        service.retried += 1
        engine.retried += 1
        if engine.reports.listeners:
            engine.reports.emit("retrying", work, f"{error!r}; retry in {delay:.3g}s", duration)
        now = engine.clock()
        # Pending again before on_retry runs: cancel() or stop() meanwhile find it there.
        if not self.back_to_pending(work, now):
            return
        work._token += 1
        work._where = DELAYED  # (its entry is pushed below: attempt counts up when it is due)
        work._blocked = None  # a retry, not a claim held elsewhere
        work.exception = error
        token = work._token
        hook = engine.hooks.on_retry
        if hook is not None:
            # Pending (cancel() and stop() find it) but not yet due: the retry waits until
            # on_retry returned.
            await engine.reports.report("on_retry", hook, work, error, delay)
        if work._where == DELAYED and work._token == token:
            engine.delayed.push(work, now + delay)
            engine.wake()

    def back_to_pending(self, work: WorkUnit, now: float) -> bool:
        """Make a finished attempt pending again; False (and cancelled) when the cue stops."""
        work.state = WorkState.PENDING
        work._where = NOWHERE
        work._scope = None  # its runner goes on with other work: cancel() must not reach it
        engine = self.engine
        if engine.closing:
            self.cancelled(work, "the cue stopped before this work could run again")
            return False
        engine.deadlines.mark_pending(work, now)
        return True

    def ended_by(self, work: WorkUnit, service: Service, error: BaseException) -> None:
        """Synchronous bookkeeping for an attempt ended by cancellation or a BaseException."""
        engine = self.engine
        engine.running -= 1
        service.running -= 1
        if engine.running <= 1:
            engine.reports.check_idle()
        if isinstance(error, WorkCancelled):
            engine.cancelled += 1
            self.finish(work, WorkState.CANCELLED, exception=error)
            hook = engine.hooks.on_cancel
            if hook is not None:
                engine.reports.report_soon("on_cancel", hook, work)
        else:
            service.failed += 1
            engine.failed += 1
            self.finish(work, WorkState.FAILED, exception=error)

    def check_outputs(
        self, work: WorkUnit, error: BaseException | None, snapshot: Snapshot | None
    ) -> None:
        """After an attempt: remove what a failed one left behind (Make's .DELETE_ON_ERROR),
        and say so when a successful one left its outputs stale."""
        try:
            if error is not None:
                if snapshot is not None:
                    for output in snapshot.touched():
                        remove = getattr(output, "delete", None)
                        if callable(remove):
                            remove()
                            logger.warning(
                                "runcue: %s failed; removed the output %s it had written",
                                work,
                                describe(output),
                            )
                return
            reason = declared_stale(work._inputs, work._outputs, work._task.max_age)
            if reason is not None:
                logger.warning(
                    "runcue: %s completed but its outputs still read as stale (%s): did the"
                    " handler forget to write them?",
                    work,
                    reason,
                )
        except Exception:
            logger.exception("runcue: checking the outputs of %s raised", work)

    # ------------------------------------------------------------------ pending work

    def skip(self, work: WorkUnit, service: Service) -> None:
        """is_stale said the output is valid: the work ends without its handler."""
        engine = self.engine
        service.skipped += 1
        engine.skipped += 1
        work.skipped = True
        if engine.watch_stalls:
            engine.last_progress = engine.clock()
            engine.stall_warned = False
        self.finish(work, WorkState.COMPLETED)
        hook = engine.hooks.on_skip
        if hook is not None:
            engine.reports.report_soon("on_skip", hook, work)

    def fail_pending(self, work: WorkUnit, error: BaseException) -> None:
        """A pending work fails without running (a pending or stall timeout)."""
        engine = self.engine
        engine.services[work._task.service].failed += 1
        engine.failed += 1
        self.finish(work, WorkState.FAILED, exception=error)
        hook = engine.hooks.on_failure
        if hook is not None:
            engine.reports.report_soon("on_failure", hook, work, error)

    def reestimate(self, service: Service) -> None:
        """The service was declared again with cost windows: its pending work takes its
        estimate again against them; work that can now never start (an estimate above a
        whole window, a dimension no longer declared) fails with that error at once instead
        of waiting forever."""
        cost = service.cost
        if cost is None:
            return
        engine = self.engine
        name = service.name
        for work in [w for w in engine.works.values() if w.state is WorkState.PENDING]:
            spec = work._task
            if spec.service != name or spec.cost is None:
                continue
            try:
                estimate = spec.cost(work) if callable(spec.cost) else spec.cost
                work._more().cost = cost.limiter.check(estimate)
            except Exception as exc:
                self.fail_pending(work, exc)

    def cancelled(self, work: WorkUnit, reason: str) -> None:
        """A work ends cancelled (its on_cancel runs without holding up the caller)."""
        engine = self.engine
        engine.cancelled += 1
        self.finish(work, WorkState.CANCELLED, exception=WorkCancelled(reason))
        hook = engine.hooks.on_cancel
        if hook is not None:
            engine.reports.report_soon("on_cancel", hook, work)

    # ------------------------------------------------------------------ the end

    def finish(
        self,
        work: WorkUnit,
        state: WorkState,
        result: Any = None,
        exception: BaseException | None = None,
        duration: float | None = None,
        now: float | None = None,
    ) -> None:
        """Move a work unit to its terminal state and tell everyone who waits (``now``: the
        loop's time, when the caller just read it)."""
        engine = self.engine
        if work._where == QUEUED or is_parked(work._where):
            engine.unqueue(work)
        else:
            work._where = NOWHERE
        work.state = state
        work.result = result
        work.exception = exception
        work.completed_at = time.time()
        work._scope = None
        seq = work._seq
        engine.works.pop(seq, None)
        bound = engine.bound
        if bound is not None and bound.waiters:
            bound.room_made(engine.pending)
        parking = engine.parking
        if work._outputs:
            woken = parking.producer_done(work)
            if woken:
                now = engine.clock()
                for dependent in woken:
                    engine.enqueue(dependent, now)
                engine.wake()
        if engine.fleet is not None:
            engine.give_back_soon(work)
        if parking.waits_for:
            parking.forget_waiting(work)
        if work._missing:
            work._missing = []
        digest = work._dedup_key
        if digest is not None:
            engine.twins.forget(work, digest)
        keep = engine.keep_finished
        finished = engine.finished
        if keep is None:
            finished[seq] = work
        elif keep > 0:
            finished[seq] = work
            if len(finished) > keep:
                finished.popitem(last=False)  # the oldest
        reports = engine.reports
        if reports.waiters:
            reports.finished(seq)
        if reports.watchers:
            for watcher in reports.watchers:
                watcher(work)
        if not engine.works or engine.running <= 1:
            reports.check_idle()
        if parking.swept and state is not WorkState.CANCELLED:
            engine.sweeps.wanted = True
            engine.wake()
        if reports.listeners:
            reports.emit_end(work, duration, now)

    # ------------------------------------------------------------------ cancelling

    async def cancel(self, work: WorkUnit, reason: str) -> bool:
        """Cancel pending or running work; False when it already finished."""
        if work.state is WorkState.PENDING:
            engine = self.engine
            engine.cancelled += 1
            self.finish(work, WorkState.CANCELLED, exception=WorkCancelled(reason))
            hook = engine.hooks.on_cancel
            if hook is not None:
                await engine.reports.report("on_cancel", hook, work)
            return True
        return self.cancel_soon(work, reason)

    def cancel_soon(self, work: WorkUnit, reason: str) -> bool:
        """``cancel()`` without waiting: an async ``on_cancel`` runs in the cue's task group."""
        if work.state is WorkState.PENDING:
            self.cancelled(work, reason)
            return True
        if work.state is WorkState.RUNNING:
            work._cancel_requested = True
            if work._scope is not None:
                work._scope.cancel()
            return True
        return False

    async def cancel_all_pending(self, reason: str) -> int:
        """Cancel every pending work unit (the cue is stopping); returns how many.

        All of them end cancelled at once, with no await in between (a check or a claim
        still being awaited for one of them finds it cancelled and starts nothing); then
        their ``on_cancel`` callbacks run concurrently, each bounded like any callback: in
        the cue's task group while it runs (``stop()`` waits for them), else right here.
        """
        engine = self.engine
        if engine.bound is not None:
            engine.bound.release_all()  # blocked submitters see the cue stopping and raise
        victims = [w for w in engine.works.values() if w.state is WorkState.PENDING]
        if victims:
            logger.warning(
                "runcue: stopping with %d work units still pending; they end cancelled: %s",
                len(victims),
                ", ".join(repr(w) for w in victims[:5]) + (" ..." if len(victims) > 5 else ""),
            )
        for work in victims:
            engine.cancelled += 1
            self.finish(work, WorkState.CANCELLED, exception=WorkCancelled(reason))
        hook = engine.hooks.on_cancel
        if hook is not None and victims:
            reports = engine.reports
            if engine.tg is None and "on_cancel" in reports.async_hooks:
                await reports.run_all("on_cancel", hook, [(work,) for work in victims])
            else:
                for work in victims:
                    reports.report_soon("on_cancel", hook, work)
        return len(victims)

    def cancel_running(self) -> None:
        """Tell every running work to cancel (the cue is stopping)."""
        for work in list(self.engine.works.values()):
            if work.state is WorkState.RUNNING:
                # Also work handed to a runner that has not started it yet (no scope yet):
                # the runner sees the request before calling its handler.
                work._cancel_requested = True
                if work._scope is not None:
                    work._scope.cancel()
