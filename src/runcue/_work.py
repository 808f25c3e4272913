"""Work units: what was submitted, where it stands, and how it ended."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import RunnerScope

__all__ = ["PriorityContext", "WorkState", "WorkUnit"]


class WorkState(str, enum.Enum):
    """Where a work unit stands. Skipped work ends ``COMPLETED`` with ``work.skipped`` set."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """True for the three terminal states."""
        return self in _FINISHED


_NONE: list[Any] = []  # shared empty list: most work declares no artifacts
_FINISHED = frozenset({WorkState.COMPLETED, WorkState.FAILED, WorkState.CANCELLED})


class WorkUnit:
    """One piece of submitted work, as handlers, checks and callbacks see it.

    The public fields are ``id``, ``task``, ``params``, ``attempt``, ``priority``, ``key``,
    ``state``, ``result``, ``error`` (the failure's message), ``exception`` (the failure
    itself), ``skipped``, ``fencing_token`` (with a store: the token of the claim on its key,
    else of its shared service's lease; None without), ``tenant`` (whose share of its service
    it runs in; None without), ``cost`` (its estimated cost, for a service with cost
    windows) and the wall-clock timestamps ``created_at``, ``started_at`` and
    ``completed_at`` (``time.time()`` values, for logs and display). runcue changes them;
    treat them as read-only. Attributes starting with ``_`` belong to the scheduler.

    A handler reports what its call really cost with :meth:`charge`, and what the server said
    about its limits with :meth:`observe`.
    """

    __slots__ = (
        "_blocked",
        "_extra",
        "_holds",
        "_inputs",
        "_missing",
        "_name",
        "_outputs",
        "_scope",
        "_seq",
        "_submitted",
        "_task",
        "_token",
        "_where",
        "attempt",
        "completed_at",
        "created_at",
        "exception",
        "key",
        "params",
        "priority",
        "result",
        "skipped",
        "started_at",
        "state",
        "task",
    )

    task: str
    params: Mapping[str, Any]
    attempt: int
    priority: float
    key: Any
    state: WorkState
    result: Any
    exception: BaseException | None
    skipped: bool
    created_at: float
    started_at: float | None
    completed_at: float | None
    # Scheduler-owned.
    # The id: "<_name>-<_seq>" for submitted work (the cue's prefix and its number, joined
    # only when asked: a pending work holds no string of its own); a work built by hand
    # (runcue 0.2 code, tests) has _seq 0 and its id in _name.
    _name: str
    _seq: int  # the submission number (also FIFO order among equal priorities)
    _submitted: float  # anyio.current_time() at submission
    _blocked: tuple[str, str] | None  # (reason, details) while parked
    _scope: RunnerScope | None
    _inputs: list[Any]  # declared input artifacts (empty when none)
    _outputs: list[Any]  # declared output artifacts
    _missing: list[Any]  # inputs missing at the last check
    _task: Any  # the TaskSpec
    _where: int  # which scheduler structure holds it (see _queues.py)
    _holds: Any  # while admitted: its admission's holds (see _limits.Admission)
    _extra: WorkExtra | None  # the fields few works use (made on first need)
    _token: int  # bumped on every enqueue; stale heap entries carry an older one

    def __init__(
        self,
        id: str,  # the public field's name: runcue 0.2 code passes id=...
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: float = 0.5,
        key: Any = None,
        created_at: float = 0.0,
        state: WorkState = WorkState.PENDING,
        started_at: float | None = None,
        completed_at: float | None = None,
        result: Any = None,
        error: str | None = None,
        attempt: int = 1,
    ) -> None:
        # The keywords are runcue 0.2's WorkUnit fields, so code that builds work units
        # itself (tests, a priority function's fixtures) constructs them as it did; ``error``
        # is kept as an exception whose message it is.
        self._name = id
        self._seq = 0
        self.task = task
        self.params = {} if params is None else params
        self.attempt = attempt
        self.priority = priority
        self.key = key
        self.state = state
        self.result = result
        self.exception = None if error is None else Exception(error)
        self._extra = None
        self.skipped = False
        self.created_at = created_at
        self.started_at = started_at
        self.completed_at = completed_at
        self._submitted = 0.0
        self._blocked = None
        self._scope = None
        self._inputs = self._outputs = self._missing = _NONE
        self._task = None
        self._where = 0
        self._holds = None
        self._token = 0

    @property
    def id(self) -> str:
        """Its id, as ``submit()`` returned it."""
        seq = self._seq
        return f"{self._name}-{seq}" if seq else self._name

    # The fields few works ever set, kept in _extra (see WorkExtra).

    @property
    def _cancel_requested(self) -> bool:
        extra = self._extra
        return extra is not None and extra.cancel_requested

    @_cancel_requested.setter
    def _cancel_requested(self, value: bool) -> None:
        self._more().cancel_requested = value

    @property
    def _dedup_key(self) -> Any:
        extra = self._extra
        return None if extra is None else extra.dedup_key

    @_dedup_key.setter
    def _dedup_key(self, value: Any) -> None:
        self._more().dedup_key = value

    @property
    def error(self) -> str | None:
        """The failure's message (``str(exception)``), or None when the work did not fail."""
        if self.exception is None:
            return None
        text = str(self.exception)
        return text or type(self.exception).__name__

    def _more(self) -> WorkExtra:
        extra = self._extra
        if extra is None:
            extra = self._extra = WorkExtra()
        return extra

    @property
    def fencing_token(self) -> int | None:
        """With a store: the fencing token of the claim on its key, else of its shared
        service's lease, for the systems its handler writes to (see README); else None."""
        extra = self._extra
        return None if extra is None else extra.fencing_token

    @fencing_token.setter
    def fencing_token(self, token: int | None) -> None:
        self._more().fencing_token = token

    @property
    def tenant(self) -> Any:
        """Whose share of its service this work runs in (``submit(..., tenant=)``)."""
        extra = self._extra
        return None if extra is None else extra.tenant

    @property
    def cost(self) -> Mapping[str, float] | None:
        """Its estimated cost per dimension (``@cue.task(cost=...)``), or None."""
        extra = self._extra
        return None if extra is None else extra.cost

    def charge(self, **amounts: float) -> None:
        """Report what this attempt really cost, e.g. ``work.charge(tokens=usage.total)``:
        the service's cost windows count the actual instead of the estimate from when the
        attempt started (a refund frees room at once; more than estimated is counted too).
        Charges within one attempt add up; a dimension never charged keeps its estimate.

        :raises ValueError: an amount that is not a finite number >= 0.
        """
        for name, amount in amounts.items():
            if (
                isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or not (amount >= 0 and amount != float("inf"))
            ):
                msg = f"work.charge({name}=...) needs a number >= 0, got {amount!r}"
                raise ValueError(msg)
        extra = self._more()
        charged = extra.charged
        if charged is None:
            charged = extra.charged = {}
        for name, amount in amounts.items():
            charged[name] = charged.get(name, 0.0) + float(amount)

    def observe(self, headers: Any) -> None:
        """Tell the cue what the server said about its limits: the response's headers
        (a mapping or a list of pairs; OpenAI/Anthropic ``x-ratelimit-*``, GitHub's, the
        IETF ``RateLimit-*`` fields, ``retry-after``). The service's limits tighten to what
        the server says is left until its reset -- never looser than declared -- and a
        ``retry-after`` pauses the service. Malformed headers are ignored."""
        observer = self._task.observer if self._task is not None else None
        if observer is not None:
            observer(self, headers)

    @property
    def task_type(self) -> str:
        """The task's name (an older spelling of :attr:`task`)."""
        return self.task

    def __repr__(self) -> str:
        extra = " skipped" if self.skipped else ""
        return (
            f"<WorkUnit {self.id} task={self.task!r} state={self.state.value}{extra} "
            f"attempt={self.attempt}>"
        )


class WorkExtra:
    """What few works carry: kept aside, so a plain work costs no memory for it."""

    __slots__ = (
        "cancel_requested",
        "charged",
        "cost",
        "dedup_key",
        "enqueued",
        "fencing_token",
        "tenant",
    )

    def __init__(self) -> None:
        self.cancel_requested = False  # cue.cancel() or stop() asked for it
        self.dedup_key: Any = None  # its digest in the de-duplication index
        self.enqueued = 0.0  # when it last became pending (with pending deadlines only)
        self.fencing_token: int | None = None
        self.tenant: Any = None
        self.cost: dict[str, float] | None = None  # the estimate, checked at submit
        self.charged: dict[str, float] | None = None  # what the handler reported this attempt


@dataclass(frozen=True)
class PriorityContext:
    """What the ``@cue.priority`` callback is given."""

    work: WorkUnit
    wait_time: float
    """Seconds since the work was submitted."""
    queue_depth: int
    """How many work units are pending in the whole cue."""
