"""The user's callbacks (checks, events, priority) and the one safe way to call them."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

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


async def call_hook(name: str, hook: Hook, *args: Any) -> None:
    """Call an event callback, sync or async; an exception is logged, never raised.

    Cancellation (a BaseException) still propagates: the cue is shutting down.
    """
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("runcue: the %s callback %r raised; the cue goes on", name, hook)
