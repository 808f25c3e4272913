"""The AIMD concurrency controller: growth while calls succeed, one halving per round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runcue._aimd import AimdController, AimdTicket


def _round(controller: AimdController, calls: int) -> list[AimdTicket]:
    """Start ``calls`` calls, as many at once as they are."""
    return [controller.started(running=index + 1) for index in range(calls)]


def test_starts_at_the_ceiling_by_default() -> None:
    """Without an initial value the service runs as declared until told to slow down."""
    controller = AimdController(8)
    assert controller.allowed == 8
    assert AimdController(8, initial=3).allowed == 3


def test_a_burst_of_429s_from_one_round_halves_once() -> None:
    """Back-offs of calls started before the decrease do not decrease again."""
    controller = AimdController(10)
    tickets = _round(controller, 10)
    assert controller.backed_off(tickets[0])
    assert controller.allowed == 5
    for ticket in tickets[1:6]:
        assert not controller.backed_off(ticket)
    assert controller.allowed == 5


def test_a_429_after_the_decrease_halves_again() -> None:
    """A call started after a decrease and rate limited halves the limit again."""
    controller = AimdController(16)
    controller.backed_off(controller.started(running=16))
    later = controller.started(running=8)
    assert controller.backed_off(later)
    assert controller.allowed == 4


def test_never_below_one() -> None:
    """Back-offs stop at one call at a time."""
    controller = AimdController(4)
    for _ in range(10):
        controller.backed_off(controller.started(running=1))
    assert controller.limit == 1.0
    assert controller.allowed == 1


def test_additive_increase_adds_one_per_round_of_successes() -> None:
    """At limit 4, four successes of calls that used the whole allowance make it 5."""
    controller = AimdController(10, initial=4)
    tickets = [controller.started(running=4) for _ in range(4)]
    grew = [controller.succeeded(ticket) for ticket in tickets]
    assert grew == [False, False, False, True]
    assert (controller.allowed, controller.limit) == (5, 5.0)


def test_the_calls_filling_the_allowance_do_not_count() -> None:
    """While calls ramp up to the allowance they say nothing about a higher one."""
    controller = AimdController(10, initial=4)
    for ticket in _round(controller, 4):  # running 1, 2, 3, 4: only the last was at the limit
        controller.succeeded(ticket)
    assert controller.limit == 4.0


def test_never_above_the_ceiling() -> None:
    """However many successes, the limit stays at the ceiling."""
    controller = AimdController(3, initial=1)
    for _ in range(100):
        controller.succeeded(controller.started(running=controller.allowed))
    assert controller.limit == 3.0
    assert controller.allowed == 3
    assert not controller.succeeded(controller.started(running=3))


def test_successes_below_the_allowance_teach_nothing() -> None:
    """Calls started while the service did not use its allowance do not grow it."""
    controller = AimdController(10, initial=4)
    for _ in range(50):
        controller.succeeded(controller.started(running=1))
    assert controller.limit == 4.0


def test_successes_from_before_a_decrease_do_not_grow_it() -> None:
    """A success of a call started before the last decrease is ignored."""
    controller = AimdController(8)
    tickets = _round(controller, 8)
    controller.backed_off(tickets[0])
    for ticket in tickets[1:]:
        assert not controller.succeeded(ticket)
    assert controller.limit == 4.0


def test_ended_without_a_signal_changes_nothing() -> None:
    """A call ending with another failure neither grows nor shrinks the limit."""
    controller = AimdController(8, initial=5)
    controller.ended(controller.started(running=5))
    assert controller.limit == 5.0


def test_each_ticket_ends_exactly_once() -> None:
    """A second end of one ticket raises; a ticket of another controller is refused."""
    controller, other = AimdController(4), AimdController(4)
    ticket = controller.started(running=1)
    controller.succeeded(ticket)
    with pytest.raises(RuntimeError, match="exactly once"):
        controller.backed_off(ticket)
    with pytest.raises(ValueError, match="another controller"):
        other.ended(controller.started(running=1))
    assert "ended" in repr(ticket)
    assert "allowed=4" in repr(controller)


def test_resize_clamps_the_limit() -> None:
    """Lowering the service's concurrent lowers the limit with it; raising does not jump."""
    controller = AimdController(10)
    controller.resize(4)
    assert controller.allowed == 4
    controller.resize(20)
    assert controller.allowed == 4
    with pytest.raises(ValueError, match="ceiling"):
        controller.resize(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"ceiling": 0}, "ceiling"),
        ({"ceiling": 2.5}, "ceiling"),
        ({"ceiling": True}, "ceiling"),
        ({"ceiling": 4, "initial": 5}, "initial"),
        ({"ceiling": 4, "initial": 0.5}, "initial"),
        ({"ceiling": 4, "increase": 0}, "increase"),
        ({"ceiling": 4, "decrease": 1.0}, "decrease"),
        ({"ceiling": 4, "decrease": 0}, "decrease"),
    ],
)
def test_bad_settings_are_refused(args: dict[str, float], message: str) -> None:
    """The ceiling, initial value and factors are checked with clear errors."""
    with pytest.raises(ValueError, match=message):
        AimdController(**args)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    ceiling=st.integers(min_value=1, max_value=20),
    outcomes=st.lists(st.tuples(st.integers(0, 25), st.sampled_from("sbe")), max_size=80),
)
def test_property_allowed_stays_between_one_and_the_ceiling(
    ceiling: int, outcomes: list[tuple[int, str]]
) -> None:
    """Any mix of starts and ends keeps 1 <= allowed <= ceiling; each decrease is one epoch."""
    controller = AimdController(ceiling)
    running: list[AimdTicket] = []
    decreases = 0
    for running_now, outcome in outcomes:
        running.append(controller.started(running=running_now))
        ticket = running.pop(running_now % len(running))
        epoch = controller.epoch
        if outcome == "s":
            controller.succeeded(ticket)
        elif outcome == "b":
            controller.backed_off(ticket)
            if controller.epoch != epoch:
                assert ticket.epoch == epoch
                decreases += 1
        else:
            controller.ended(ticket)
        assert 1 <= controller.allowed <= ceiling
        assert 1.0 <= controller.limit <= ceiling
    assert controller.epoch == decreases
