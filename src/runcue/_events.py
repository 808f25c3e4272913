"""Events: a record of everything the scheduler does, for listeners such as progress views.

``cue.subscribe(listener)`` calls ``listener(event)`` synchronously, on the event loop, for
every event of every work unit, after the cue's own bookkeeping and before the matching
``on_*`` callback. Listeners must be quick; one that raises is logged and kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["ATTEMPT_OUTCOMES", "EVENT_KINDS", "WorkEvent"]

EVENT_KINDS = (
    "queued",  # submitted
    "waiting",  # parked: not ready, or a check failed (details say which)
    "started",  # an attempt started
    "completed",
    "failed",  # the work failed for good
    "skipped",  # is_stale said the output is valid
    "retrying",  # an attempt failed; another follows after a backoff (details: the delay)
    "paused",  # the handler raised RateLimited; the service pauses (details: how long)
    "cancelled",
)

# How an attempt ended, by the kind of the event that ended it (after "started"), as the
# timeline and the OpenTelemetry spans name it.
ATTEMPT_OUTCOMES = {
    "completed": "completed",
    "failed": "failed",
    "retrying": "retried",
    "paused": "rate_limited",
    "cancelled": "cancelled",
}


class WorkEvent(NamedTuple):
    """One thing that happened to one work unit (immutable).

    - ``kind``: one of :data:`EVENT_KINDS`;
    - ``work``: the work unit;
    - ``time``: ``anyio.current_time()`` when it happened;
    - ``service``: the work's service (None for tasks without one);
    - ``details``: what happened, in words (why it waits, the error, the delay);
    - ``duration``: for ``completed`` and ``failed`` after running, the attempt's duration in
      seconds (else None).

    A named tuple: made at C speed, three times per work, so a listener costs what it costs.
    """

    kind: str
    work: WorkUnit
    time: float
    service: str | None
    details: str = ""
    duration: float | None = None
