"""Diagnosis: why a pending work is not running, in words, and the cue's counts as a snapshot.

Everything here reads the scheduler's state and changes nothing: ``describe`` (behind
``debug_blocked()``, ``explain()`` and the timeout messages) asks the work's place in the
cue and, for queued work, its service's limits (``Admission.blocked``); ``stats`` builds the
frozen :class:`CueStats`.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from ._artifacts import artifact_key
from ._artifacts import describe as describe_artifact
from ._queues import CHECKING, DELAYED, INTAKE, QUEUED, is_parked
from ._stats import CueStats, LimitState, RateWindowStats, ServiceStats
from ._work import WorkState, WorkUnit

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["debug_blocked", "describe", "explain", "missing_inputs", "stats"]


def missing_inputs(engine: Scheduler, work: WorkUnit) -> str:
    """Which declared inputs are missing, and what (if anything) will produce them."""
    parts = []
    producers = engine.parking.producers
    for item in work._missing:
        makers = [p for p in producers.get(artifact_key(item), {}).values() if p is not work]
        if makers:
            maker = makers[0]
            source = f"{maker.state.value} work {maker.id} ({maker.task}) will produce it"
            state = "waiting for input" if item.exists() else "missing input"
            parts.append(f"{state} {describe_artifact(item)}: {source}")
        else:
            parts.append(
                f"missing input {describe_artifact(item)}: no pending or running work produces it"
            )
    return "; ".join(parts)


def describe(engine: Scheduler, work: WorkUnit) -> tuple[str, str]:
    """(reason, details) for why this pending work is not running."""
    where = work._where
    now = engine.clock()
    blocked = work._blocked
    if is_parked(where) and blocked is not None:
        if blocked[0] == "not_ready" and work._missing:
            return ("not_ready", missing_inputs(engine, work))
        return blocked
    if where == INTAKE:
        return ("queued", "submitted; the scheduler has not seen it yet")
    if where == CHECKING:
        return ("checking", "is_ready / is_stale are being asked")
    if where == DELAYED and blocked is not None and blocked[0] == "claimed_elsewhere":
        return (
            "claimed_elsewhere",
            "another process holds the claim on its key; asked again soon, and is_stale"
            " decides once the claim is free",
        )
    if where == DELAYED:
        due = engine.delayed.due_of(work)
        if due is not None:
            return (
                "retry_wait",
                f"attempt {work.attempt + 1} starts in {due - now:.3g}s (after {work.exception!r})",
            )
        return ("retry_wait", f"attempt {work.attempt + 1} waits for its backoff")
    if where == QUEUED:
        service = engine.services[work._task.service]
        if engine.closing:
            return ("stopping", "the cue is stopping and starts nothing new")
        reason = service.admission.blocked(work, now)
        if reason is not None:
            return reason
        return ("queued", f"waiting its turn among {service.label} ({len(service.queue)} queued)")
    return ("unknown", f"state {work.state.value}")


def debug_blocked(engine: Scheduler) -> list[dict[str, Any]]:
    """Every pending work with why it is not running."""
    blocked = []
    for work in list(engine.works.values()):
        if work.state is WorkState.PENDING:
            reason, details = describe(engine, work)
            blocked.append({"work": work, "reason": reason, "details": details})
    return blocked


def explain(engine: Scheduler, work: WorkUnit | None, work_id: str) -> str:
    """One sentence on where this work stands and, if pending, why it is not running."""
    if work is None:
        return f"work {work_id!r} is not known (never submitted, or no longer kept)."
    name = f"work {work.id} ({work.task})"
    if work.state is WorkState.PENDING:
        reason, details = describe(engine, work)
        return f"{name} is pending: {reason} - {details}."
    if work.state is WorkState.RUNNING:
        return f"{name} is running (attempt {work.attempt})."
    if work.skipped:
        return f"{name} was skipped: is_stale said its output is valid."
    if work.state is WorkState.COMPLETED:
        return f"{name} completed."
    return f"{name} is {work.state.value}: {work.error}."


def stats(engine: Scheduler, *, running: bool) -> CueStats:
    """A frozen snapshot of every counter (``running``: the cue runs, its clock reads)."""
    now = engine.clock() if running else 0.0
    ended = engine.stopped_at
    pending_by: dict[str | None, int] = {}
    for work in engine.works.values():
        if work.state is WorkState.PENDING:
            name = work._task.service
            pending_by[name] = pending_by.get(name, 0) + 1
    services: dict[str | None, ServiceStats] = {}
    for name, service in engine.services.items():
        windows: tuple[RateWindowStats, ...] = ()
        next_free = 0.0
        limits: list[LimitState] = []
        if service.rate is not None:
            if running:
                windows = tuple(
                    RateWindowStats(spec.limit, spec.period, used)
                    for spec, used in service.rate.used()
                )
                next_free = max(0.0, service.rate.next_free(now) - now)
            else:
                windows = tuple(RateWindowStats(s.limit, s.period, 0) for s in service.rate.specs)
        blocked = None
        if running:
            for limit in service.admission.limits:
                limits.extend(limit.states(now))
            head = service.queue.head() if service.queue.live else None
            if head is not None:
                blocked = service.admission.blocked(head, now)
        services[name] = ServiceStats(
            name=name,
            concurrent=service.concurrent,
            rate=service.rate_text,
            pending=pending_by.get(name, 0),
            running=service.running + service.abandoned,
            started=service.started,
            completed=service.completed,
            failed=service.failed,
            skipped=service.skipped,
            retried=service.retried,
            max_running=service.max_running,
            windows=windows,
            next_free_slot=next_free,
            paused_for=max(0.0, service.paused_until - now) if running else 0.0,
            shared=service.shared,
            store_error=service.store_error,
            limits=tuple(limits),
            blocked=blocked,
        )
    if running:
        elapsed = now - engine.started_at
    elif ended is not None:
        elapsed = ended - engine.started_at  # the whole run, after it stopped
    else:
        elapsed = 0.0
    done = engine.completed + engine.failed
    return CueStats(
        submitted=engine.submitted,
        pending=engine.pending,
        running=engine.running,
        completed=engine.completed,
        failed=engine.failed,
        skipped=engine.skipped,
        cancelled=engine.cancelled,
        retried=engine.retried,
        elapsed=elapsed,
        throughput=done / elapsed if elapsed > 0 else 0.0,
        services=types.MappingProxyType(services),
    )
