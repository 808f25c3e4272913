"""Registration: services, tasks and the user's callbacks, validated where they are declared.

Every declaration is checked before anything changes, and a bad value is refused with a
message that names it and the fix. A service declared again replaces its limits live (the
scheduler rebuilds its admission); a task name is registered once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._artifacts import ArtifactSpec
from ._errors import UnknownServiceError
from ._hooks import Hooks
from ._lifecycle import RUNNING, STOPPING
from ._service import Service
from ._store import CostStore
from ._task import Backoff, RetryOn, TaskSpec, is_async_callable
from ._tenants import Tenants
from ._work import WorkUnit

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["Registry", "check_seconds"]

F = TypeVar("F", bound=Callable[..., Any])


def check_seconds(name: str, value: float | None, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{name} must be a number of seconds > 0 (or None to turn it off), got {value!r}"
        raise ValueError(msg)
    return float(value)


class Registry:
    """Declaring services, tasks and callbacks; a base of :class:`runcue.Cue`."""

    _engine: Scheduler
    _state: str
    _tasks: dict[str, TaskSpec]
    _services: dict[str | None, Service]
    _hooks: Hooks

    def service(
        self,
        name: str,
        *,
        rate: str | None = None,
        concurrent: int | None = None,
        shared: bool = False,
        costs: Mapping[str, str] | None = None,
        adaptive: bool = False,
        tenants: Tenants | None = None,
        max_wait: float | None = None,
    ) -> None:
        """Declare a service, or change its limits (also while running).

        :param rate: ``"N/period"``, e.g. ``"60/min"``, ``"100/15min"``, or several windows
            joined by ``;`` (``"60/min;10/10s"``): at most N handler starts in any window.
        :param concurrent: at most this many handlers of the service run at once.
        :param shared: keep these limits in the cue's ``store``, shared by every process
            that uses the same store and namespace.
        :param costs: cost windows per dimension in the rate grammar, e.g. ``{"tokens":
            "90000/min;2000000/day"}``: at most that much of each dimension in any window,
            counted on each work's estimate (``@cue.task(cost=...)``) and settled on its
            actual cost (``work.charge(...)``).
        :param adaptive: learn how many calls may run at once, between 1 and
            ``concurrent``: halve on ``RateLimited`` or a timeout, grow while calls succeed.
        :param tenants: share the service fairly between tenants (``submit(...,
            tenant=)``): a :class:`runcue.Tenants` with weights and per-tenant rates.
        :param max_wait: fail work at once (``QuotaExhausted``) when a spent window (a rate,
            a cost budget, what the server said is left) keeps it from starting for longer
            than this many seconds; a task's own ``max_wait`` wins.
        :raises ValueError: (``InvalidRateError``) for a rate or cost window that does not
            parse, or a bad ``concurrent``.
        """
        if not isinstance(name, str) or not name:
            msg = f"a service name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        if shared and self._engine.store is None:
            msg = (
                f"service {name!r}: shared=True keeps the limits in a store; create the cue"
                " with runcue.Cue(store=runcue.RedisStore(...))"
            )
            raise ValueError(msg)
        if shared and costs is not None and not isinstance(self._engine.store, CostStore):
            msg = (
                f"service {name!r}: shared=True with costs= keeps the cost windows in the"
                f" store, and {type(self._engine.store).__name__} does not keep any (it is not"
                " a runcue.CostStore); use runcue.RedisStore, or drop shared=True to count"
                " costs in this process alone"
            )
            raise ValueError(msg)
        wait = check_seconds(f"service {name!r}: max_wait", max_wait)
        existing = self._services.get(name)
        service = existing or Service(name, clock=anyio.current_time)
        service.configure(  # validates everything before anything changes
            rate=rate,
            concurrent=concurrent,
            costs=costs,
            adaptive=adaptive,
            tenants=tenants,
            max_wait=wait,
        )
        service.shared = shared
        if existing is None:
            self._services[name] = service
        if self._state in (RUNNING, STOPPING):
            self._engine.add_service(service)  # its admission is rebuilt, live

    def task(
        self,
        name: str,
        *,
        uses: str | None = None,
        retry: int = 1,
        backoff: Backoff | float | None = None,
        retry_on: RetryOn = Exception,
        timeout: float | None = None,
        inputs: ArtifactSpec | None = None,
        outputs: ArtifactSpec | None = None,
        max_age: float | None = None,
        delete_on_error: bool = True,
        dedup: bool = False,
        cost: Mapping[str, float] | Callable[[WorkUnit], Mapping[str, float]] | None = None,
        actual_cost: Callable[[WorkUnit, Any], Mapping[str, float] | None] | None = None,
        max_wait: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function (sync or async) as the handler of task ``name``.

        :param uses: the service whose limits the handler runs under.
        :param retry: attempts in all, the first included (1 = no retry).
        :param backoff: a :class:`Backoff`, or a number used as its ``base``.
        :param retry_on: exception types, or a predicate on the exception, that deserve a retry.
        :param timeout: seconds before an attempt fails with ``HandlerTimeout``.
        :param inputs: declared input artifacts: a params key, or ``work -> iterable`` of paths
            or artifacts. The work is ready when all exist.
        :param outputs: declared outputs, likewise. The work is stale when one is missing or
            older than an input (or than ``max_age`` seconds).
        :param delete_on_error: remove declared outputs a failed attempt created or changed.
        :param dedup: treat a submit whose params equal those of pending or running work of
            this task as that same work (its id is returned, nothing new is queued). Off by
            default: every ``submit()`` is a new work unit. ``key=`` on ``submit()`` always
            de-duplicates, with or without this.
        :param cost: each work's estimated cost in its service's cost windows: a mapping such
            as ``{"tokens": 1200}``, or a function of the work returning one. Checked at
            ``submit()``: an estimate above a window's whole limit is refused there.
        :param actual_cost: ``(work, result) -> mapping``: the attempt's actual cost, asked
            after it succeeded (``work.charge(...)`` inside the handler does the same).
        :param max_wait: see :meth:`service`; this task's work only.
        """
        if not isinstance(name, str) or not name:
            msg = f"a task name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        if name in self._tasks:
            msg = f"task {name!r} is already registered; give the new handler another name"
            raise ValueError(msg)
        if uses is not None and uses not in self._services:
            known = ", ".join(repr(s) for s in self._services if s is not None) or "none yet"
            msg = (
                f"Unknown service {uses!r}: task {name!r} uses it, but it is not declared"
                f" (declared: {known}); call cue.service({uses!r}, ...) before registering the task"
            )
            raise UnknownServiceError(msg)
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
            msg = (
                f"task {name!r}: retry counts attempts (the first included) and must be a whole"
                f" number >= 1, got {retry!r}"
            )
            raise ValueError(msg)
        if backoff is None:
            policy = Backoff()
        elif isinstance(backoff, Backoff):
            policy = backoff
        elif isinstance(backoff, (int, float)) and not isinstance(backoff, bool):
            policy = Backoff(base=float(backoff))
        else:
            msg = f"task {name!r}: backoff must be a runcue.Backoff or a number, got {backoff!r}"
            raise TypeError(msg)
        if not isinstance(dedup, bool):
            msg = f"task {name!r}: dedup must be True or False, got {dedup!r}"
            raise TypeError(msg)
        if not (callable(retry_on) or isinstance(retry_on, tuple)):
            msg = (
                f"task {name!r}: retry_on must be exception types or a predicate, got {retry_on!r}"
            )
            raise TypeError(msg)
        limit = check_seconds(f"task {name!r}: timeout", timeout)
        age = check_seconds(f"task {name!r}: max_age", max_age)
        wait = check_seconds(f"task {name!r}: max_wait", max_wait)
        self._check_costs(name, uses, cost, actual_cost)
        for label, spec in (("inputs", inputs), ("outputs", outputs)):
            if spec is not None and not (isinstance(spec, str) or callable(spec)):
                msg = (
                    f"task {name!r}: {label} must be a params key (str) or a function of the"
                    f" work returning paths or artifacts, got {spec!r}"
                )
                raise TypeError(msg)

        def register(handler: F) -> F:
            if not callable(handler):
                msg = f"task {name!r}: the handler must be callable, got {handler!r}"
                raise TypeError(msg)
            self._tasks[name] = TaskSpec(
                name=name,
                handler=handler,
                is_async=is_async_callable(handler),
                cost=cost,
                actual_cost=actual_cost,
                max_wait=wait,
                observer=self._services[uses].observe,
                service=uses,
                retry=retry,
                backoff=policy,
                retry_on=retry_on,
                timeout=limit,
                inputs=inputs,
                outputs=outputs,
                max_age=age,
                delete_on_error=delete_on_error,
                dedup=dedup,
            )
            if inputs is not None or outputs is not None:
                self._engine.checks.declarations = True
                self._engine.checks.refresh()
            return handler

        return register

    def _check_costs(self, name: str, uses: str | None, cost: object, actual_cost: object) -> None:
        if cost is None and actual_cost is None:
            return
        service = self._services[uses]
        if service.cost is None:
            msg = (
                f"task {name!r}: cost= and actual_cost= count against the cost windows of its"
                f" service, and {service.label} declares none; declare them with"
                f" cue.service({uses!r}, costs={{'tokens': '90000/min'}})"
            )
            raise ValueError(msg)
        if cost is not None and not callable(cost):
            if not isinstance(cost, Mapping):
                msg = (
                    f"task {name!r}: cost must be a mapping such as {{'tokens': 1200}} or a"
                    f" function of the work returning one, got {cost!r}"
                )
                raise TypeError(msg)
            service.cost.limiter.check(cost)  # a constant too large is refused right here
        if actual_cost is not None and not callable(actual_cost):
            msg = (
                f"task {name!r}: actual_cost must be a function (work, result) -> mapping,"
                f" got {actual_cost!r}"
            )
            raise TypeError(msg)

    def get_task(self, name: str) -> TaskSpec | None:
        """The registration of task ``name``, or None."""
        return self._tasks.get(name)

    def _hook(self, slot: str, func: F) -> F:
        if not callable(func):
            msg = f"@cue.{slot} must decorate a function, got {func!r}"
            raise TypeError(msg)
        setattr(self._hooks, slot, func)
        self._engine.checks.refresh()
        self._engine.reports.refresh()
        return func

    def is_ready(self, func: F) -> F:
        """Register ``is_ready(work) -> bool``: are the inputs there? False keeps it pending."""
        return self._hook("is_ready", func)

    def is_stale(self, func: F) -> F:
        """Register ``is_stale(work) -> bool``: does it need to run? False skips it."""
        return self._hook("is_stale", func)

    def priority(self, func: F) -> F:
        """Register ``priority(ctx) -> float`` in 0.0..1.0, higher first (see PriorityContext).

        It must be a plain (sync) function: it is asked while the scheduler orders its queue.
        """
        if is_async_callable(func):
            msg = "@cue.priority must be a plain function (not async): it orders the queue inline"
            raise TypeError(msg)
        return self._hook("priority", func)

    def on_start(self, func: F) -> F:
        """Register ``on_start(work)``, called as each attempt starts."""
        return self._hook("on_start", func)

    def on_complete(self, func: F) -> F:
        """Register ``on_complete(work, result, duration)``."""
        return self._hook("on_complete", func)

    def on_failure(self, func: F) -> F:
        """Register ``on_failure(work, error)``, called once, after the last attempt."""
        return self._hook("on_failure", func)

    def on_skip(self, func: F) -> F:
        """Register ``on_skip(work)``, called when ``is_stale`` said the output is valid."""
        return self._hook("on_skip", func)

    def on_retry(self, func: F) -> F:
        """Register ``on_retry(work, error, delay)``, called before each retry."""
        return self._hook("on_retry", func)

    def on_cancel(self, func: F) -> F:
        """Register ``on_cancel(work)``, called when work ends cancelled."""
        return self._hook("on_cancel", func)

    def on_pending_warning(self, func: F) -> F:
        """Register ``on_pending_warning(work, seconds)`` (see ``pending_warn_after``)."""
        return self._hook("on_pending_warning", func)

    def on_stall_warning(self, func: F) -> F:
        """Register ``on_stall_warning(seconds_since_progress, pending_count)``."""
        return self._hook("on_stall_warning", func)
