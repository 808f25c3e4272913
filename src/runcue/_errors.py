"""The exceptions runcue raises, and the one a handler raises to say "slow down".

The tree::

    RuncueError
    ├── CueStateError (also RuntimeError)      the cue was used in the wrong state
    ├── UnknownTaskError (also ValueError)     submit() of a task nobody registered
    ├── UnknownServiceError (also ValueError)  a task uses a service nobody declared
    ├── InvalidRateError (also ValueError)     a rate string that does not parse
    ├── CostTooLargeError (also ValueError)    a work's estimate exceeds a cost window's limit
    ├── CueFull                                max_pending work units are pending
    │   └── SubmitDeadlock                     ... and none of them can ever start
    ├── WorkNotFound (also KeyError)           an id the cue does not know (or no longer keeps)
    ├── WorkCancelled                          wait() on work that was cancelled
    ├── LeaseLost                              its store lease or claim ran out while it ran
    ├── QuotaExhausted                         a spent window keeps it waiting past max_wait
    ├── WorkTimeout (also TimeoutError)
    │   ├── PendingTimeout                     waited longer than ``pending_timeout``
    │   ├── StallTimeout                       nothing progressed for ``stall_timeout``
    │   └── HandlerTimeout                     the handler ran past its task's ``timeout``
    └── RateLimited                            raised *by a handler*: pause the service
"""

from __future__ import annotations

import math

__all__ = [
    "CostTooLargeError",
    "CueFull",
    "CueStateError",
    "HandlerTimeout",
    "InvalidRateError",
    "LeaseLost",
    "QuotaExhausted",
    "PendingTimeout",
    "RateLimited",
    "RuncueError",
    "StallTimeout",
    "SubmitDeadlock",
    "UnknownServiceError",
    "UnknownTaskError",
    "WorkCancelled",
    "WorkNotFound",
    "WorkTimeout",
]


class RuncueError(Exception):
    """The base of every exception runcue defines."""


class CueStateError(RuncueError, RuntimeError):
    """The cue was used in a state that does not allow the call (the message names the fix)."""


class UnknownTaskError(RuncueError, ValueError):
    """``submit()`` named a task that no ``@cue.task`` registered."""


class UnknownServiceError(RuncueError, ValueError):
    """A task declared ``uses=`` a service that ``cue.service()`` never declared."""


class InvalidRateError(RuncueError, ValueError):
    """A rate string such as ``"60/min"`` did not parse."""


class CostTooLargeError(RuncueError, ValueError):
    """A work's estimated cost is above a cost window's whole limit: it could never start."""


class CueFull(RuncueError):
    """``max_pending`` work units are pending: ``submit_nowait()`` raises this where
    ``submit()`` would wait (and ``submit()`` on a full cue that has not started)."""


class SubmitDeadlock(CueFull):
    """A ``submit()`` blocked by ``max_pending`` gave up: every pending work is waiting for
    inputs (``is_ready`` said no) and nothing runs, so nothing in the cue can make room."""


class WorkNotFound(RuncueError, KeyError):
    """No work with this id is known (never submitted, or finished and no longer kept)."""

    def __str__(self) -> str:  # KeyError quotes its argument; a sentence reads better
        return str(self.args[0]) if self.args else "work not found"


class WorkCancelled(RuncueError):
    """The work was cancelled before it finished: ``wait()`` raises this."""


class LeaseLost(RuncueError):
    """The work's lease (a shared service's slot) or claim (its key) in the store could not be
    renewed before it expired: the handler was cancelled before another process could take
    the slot, and the attempt failed with this error (retried when ``retry`` allows)."""


class QuotaExhausted(RuncueError):
    """The work could not start within its ``max_wait`` because a window of its service (a
    rate, a cost budget, what the server said is left) is spent until later: it failed at
    once instead of waiting. The message names the window and when it frees; ``frees_in``
    is the seconds until then."""

    def __init__(self, message: str, frees_in: float = math.inf) -> None:
        super().__init__(message)
        self.frees_in = frees_in


class WorkTimeout(RuncueError, TimeoutError):
    """Work failed because a time limit ran out."""


class PendingTimeout(WorkTimeout):
    """The work stayed pending longer than the cue's ``pending_timeout``."""


class StallTimeout(WorkTimeout):
    """Nothing started or finished for ``stall_timeout`` seconds while this work was pending."""


class HandlerTimeout(WorkTimeout):
    """The handler ran longer than its task's ``timeout``."""


class RateLimited(RuncueError):
    """Raise from a handler when the service said "slow down" (for example HTTP 429).

    The whole service pauses for ``retry_after`` seconds (no work of it starts), then the work
    runs again; this attempt does not count against the task's ``retry`` budget.
    """

    def __init__(self, retry_after: float = 1.0, message: str | None = None) -> None:
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not 0 <= retry_after < math.inf
        ):
            msg = (
                "retry_after must be a finite number of seconds >= 0 (e.g. the response's"
                f" Retry-After as a float), got {retry_after!r}"
            )
            raise ValueError(msg)
        self.retry_after = float(retry_after)
        super().__init__(message or f"rate limited by the service; retry after {retry_after:g}s")
