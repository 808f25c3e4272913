"""Task registrations: the handler, the service it uses, and its retry and timeout policy."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, Union

from ._artifacts import ArtifactSpec
from ._errors import RateLimited
from ._hooks import logger

__all__ = ["Backoff", "RetryOn", "TaskSpec", "is_async_callable"]

RetryOn: TypeAlias = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]
]


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, bound methods, partials and callable objects of them."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the bound __call__ itself
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (the attempt that just failed, from 1).

    ``min(max_delay, base * factor ** (attempt - 1))``, then, with ``jitter`` (the default),
    a uniform draw between 0 and that ("full jitter", so retrying clients spread out).
    """

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.factor >= 1 and self.max_delay >= 0):
            msg = (
                f"Backoff needs base >= 0, factor >= 1 and max_delay >= 0, got base={self.base!r},"
                f" factor={self.factor!r}, max_delay={self.max_delay!r}"
            )
            raise ValueError(msg)

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter."""
        try:
            raw = self.base * self.factor ** (attempt - 1)
        except OverflowError:
            raw = self.max_delay
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay to wait after failed attempt number ``attempt``."""
        ceiling = self.ceiling(attempt)
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True)
class TaskSpec:
    """One ``@cue.task`` registration."""

    name: str
    handler: Callable[..., Any]
    is_async: bool
    service: str | None
    retry: int = 1
    backoff: Backoff = Backoff()
    retry_on: RetryOn = Exception
    timeout: float | None = None
    inputs: ArtifactSpec | None = None
    outputs: ArtifactSpec | None = None
    max_age: float | None = None
    delete_on_error: bool = True
    dedup: bool = False
    """Equal params mean the same work: a submit equal to live work returns its id."""
    cost: Mapping[str, float] | Callable[[Any], Mapping[str, float]] | None = None
    """Each work's estimated cost per dimension of its service's cost windows."""
    actual_cost: Callable[[Any, Any], Mapping[str, float] | None] | None = None
    """``(work, result) -> actual cost``, asked after a successful attempt."""
    max_wait: float | None = None
    """Fail work at once that a spent window keeps from starting for longer than this."""
    observer: Callable[[Any, Any], None] | None = field(default=None, repr=False, compare=False)
    """The service's ``observe`` (``work.observe(headers)`` reaches it)."""

    declares: bool = field(init=False, repr=False, compare=False)
    """True when the task declares inputs or outputs (the checks derive from them)."""

    def __post_init__(self) -> None:
        # A field, not a property: the runner path reads it for every work.
        object.__setattr__(self, "declares", self.inputs is not None or self.outputs is not None)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` (from 1) gets another try."""
        if attempt >= self.retry or isinstance(error, RateLimited):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, (type, tuple)):
            return isinstance(error, retry_on)
        try:
            return bool(retry_on(error))
        except Exception:
            logger.exception(
                "runcue: the retry_on predicate of task %r raised; the work fails without retry",
                self.name,
            )
            return False
