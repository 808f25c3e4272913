"""The user's callbacks (checks, events, priority) and the one safe way to call them."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["Hooks", "call_hook", "logger"]

logger = logging.getLogger("runcue")

Hook = Callable[..., Any]


class Hooks:
    """Every registered callback; None where the user registered none."""

    __slots__ = (
        "is_ready",
        "is_stale",
        "on_cancel",
        "on_complete",
        "on_failure",
        "on_pending_warning",
        "on_retry",
        "on_skip",
        "on_stall_warning",
        "on_start",
        "priority",
    )

    def __init__(self) -> None:
        self.is_ready: Hook | None = None
        self.is_stale: Hook | None = None
        self.priority: Hook | None = None
        self.on_start: Hook | None = None
        self.on_complete: Hook | None = None
        self.on_failure: Hook | None = None
        self.on_skip: Hook | None = None
        self.on_retry: Hook | None = None
        self.on_cancel: Hook | None = None
        self.on_pending_warning: Hook | None = None
        self.on_stall_warning: Hook | None = None


async def call_hook(name: str, hook: Hook, *args: Any, timeout: float = math.inf) -> None:
    """Call an event callback, sync or async; an exception is logged, never raised.

    An async callback gets ``timeout`` seconds, then is cancelled and logged. Cancellation
    from outside still propagates: the cue is shutting down.
    """
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            with anyio.move_on_after(timeout) as scope:
                await result
            if scope.cancelled_caught:
                logger.error(
                    "runcue: the %s callback %r did not return within %gs; it was cancelled",
                    name,
                    hook,
                    timeout,
                )
    except Exception:
        logger.exception("runcue: the %s callback %r raised; the cue goes on", name, hook)
