"""Adaptive concurrency for one service: additive increase, multiplicative decrease (AIMD).

This module owns :class:`AimdController`, the opt-in controller that moves a service's
effective concurrency between 1 and its declared ``concurrent`` (the ceiling): it grows while
calls succeed and backs off when the service says "slow down" (``RateLimited``) or a call
times out. Plain synchronous bookkeeping: the caller reports each call's start and end.

The rules:

* ``limit`` is a float in ``[1, ceiling]``; :attr:`AimdController.allowed` is its integer
  part, the number of calls that may run at once. It starts at ``initial`` (default: the
  ceiling, so a service is as fast as declared until told otherwise).
* **Increase**: every :attr:`~AimdController.allowed` successes (one round of calls) add
  ``increase`` to ``limit``, up to the ceiling. Only calls that started
  while the service used its whole allowance count (``running >= allowed`` at the start):
  a service that does not use its limit learns nothing about a higher one.
* **Decrease**: a back-off multiplies ``limit`` by ``decrease`` (default 0.5), not below 1,
  **once per round trip**: every start is stamped with the current *epoch*, each decrease
  begins a new epoch, and a back-off or success of a call started in an earlier epoch is
  ignored. A burst of 429s from calls that were all started before the decrease halves once.

Every :class:`AimdTicket` ends exactly once (succeeded, backed off, or ended without a
signal); a second end raises ``RuntimeError``.
"""

from __future__ import annotations

import math

__all__ = ["AimdController", "AimdTicket"]


class AimdTicket:
    """One call's start, handed back when it ends."""

    __slots__ = ("_ended", "_owner", "epoch", "saturated")

    def __init__(self, owner: AimdController, epoch: int, saturated: bool) -> None:
        self._owner = owner
        self.epoch = epoch
        self.saturated = saturated
        self._ended = False

    def __repr__(self) -> str:
        state = "ended" if self._ended else "running"
        return f"<AimdTicket epoch={self.epoch} saturated={self.saturated} {state}>"


class AimdController:
    """The effective concurrency of one service (see the module docstring)."""

    __slots__ = ("_successes", "ceiling", "decrease", "epoch", "increase", "limit")

    def __init__(
        self,
        ceiling: int,
        *,
        initial: float | None = None,
        increase: float = 1.0,
        decrease: float = 0.5,
    ) -> None:
        if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
            msg = f"the ceiling (the service's concurrent) must be an int >= 1, got {ceiling!r}"
            raise ValueError(msg)
        if not (increase > 0 and math.isfinite(increase)):
            msg = f"increase must be a finite number > 0, got {increase!r}"
            raise ValueError(msg)
        if not 0 < decrease < 1:
            msg = f"decrease must be a factor between 0 and 1 (e.g. 0.5), got {decrease!r}"
            raise ValueError(msg)
        start = ceiling if initial is None else initial
        if not 1 <= start <= ceiling:
            msg = f"initial must be between 1 and the ceiling {ceiling}, got {initial!r}"
            raise ValueError(msg)
        self.ceiling = ceiling
        self.increase = increase
        self.decrease = decrease
        self.limit = float(start)
        self.epoch = 0
        self._successes = 0  # counted successes since the last step up or down

    @property
    def allowed(self) -> int:
        """How many calls may run at once now (1 to the ceiling)."""
        return max(1, min(self.ceiling, int(self.limit)))

    def started(self, running: int) -> AimdTicket:
        """A call starts; ``running`` counts the calls in flight, this one included."""
        return AimdTicket(self, self.epoch, running >= self.allowed)

    def _end(self, ticket: AimdTicket) -> bool:
        """Mark the ticket ended; True if it belongs to the current epoch."""
        if ticket._owner is not self:
            msg = f"{ticket!r} was started on another controller"
            raise ValueError(msg)
        if ticket._ended:
            msg = f"{ticket!r} already ended: end each call exactly once"
            raise RuntimeError(msg)
        ticket._ended = True
        return ticket.epoch == self.epoch

    def succeeded(self, ticket: AimdTicket) -> bool:
        """The call succeeded. True if :attr:`allowed` grew."""
        current = self._end(ticket)
        if not (current and ticket.saturated) or self.limit >= self.ceiling:
            return False
        self._successes += 1
        if self._successes < self.allowed:
            return False
        self._successes = 0
        before = self.allowed
        self.limit = min(float(self.ceiling), self.limit + self.increase)
        return self.allowed > before

    def backed_off(self, ticket: AimdTicket) -> bool:
        """The call was rate limited or timed out. True if :attr:`allowed` shrank."""
        if not self._end(ticket):
            return False  # started before the last decrease: already accounted for
        before = self.allowed
        self.limit = max(1.0, self.limit * self.decrease)
        self.epoch += 1
        self._successes = 0
        return self.allowed < before

    def ended(self, ticket: AimdTicket) -> None:
        """The call ended with no signal about the service's capacity (another failure)."""
        self._end(ticket)

    def resize(self, ceiling: int) -> None:
        """The service's ``concurrent`` changed: clamp the limit to the new ceiling."""
        if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
            msg = f"the ceiling (the service's concurrent) must be an int >= 1, got {ceiling!r}"
            raise ValueError(msg)
        self.ceiling = ceiling
        self.limit = min(self.limit, float(ceiling))

    def __repr__(self) -> str:
        return f"<AimdController allowed={self.allowed} limit={self.limit:.2f}/{self.ceiling}>"
