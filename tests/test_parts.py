"""The engine's pure parts on their own: the queues and parking (``_queues``) and the limits
and admission (``_limits``), on an injected clock, without a cue."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

import runcue
from runcue._limits import Admission, Limit, PauseLimit, RateLimit
from runcue._queues import (
    DELAYED,
    NOWHERE,
    PARKED,
    QUEUED,
    SWEPT,
    Delayed,
    Parking,
    SweepClock,
    Swept,
    WorkQueue,
    order_key,
)
from runcue._rate import RateLimiter, parse_rate
from runcue._slots import ConcurrencyLimit
from runcue._task import TaskSpec
from runcue._twins import Twins


async def _noop(work: runcue.WorkUnit) -> None:
    return None


def make_work(n: int, *, seq: int | None = None, is_async: bool = True) -> runcue.WorkUnit:
    """A work unit as the scheduler holds it (a sequence number, a task spec)."""
    work = runcue.WorkUnit("w", "t", {"n": n})
    work._seq = n if seq is None else seq
    work._task = TaskSpec(name="t", handler=_noop, is_async=is_async, service=None)
    return work


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- queues


def test_a_queue_serves_priority_first_then_submission_order() -> None:
    """Higher priority first; equal priority in submission order."""
    queue = WorkQueue()
    works = [make_work(n) for n in range(5)]
    priorities = [0.5, 0.9, 0.5, 0.1, 0.9]
    for work, priority in zip(works, priorities):
        queue.push(work, order_key(0.0, priority, 300.0))
    order = []
    while (popped := queue.pop()) is not None:
        order.append(popped.params["n"])
    assert order == [1, 4, 0, 2, 3]
    assert len(queue) == 0


def test_waiting_ages_a_low_priority_work_past_newer_high_priority_ones() -> None:
    """One unit of priority per priority_aging seconds of waiting: no starvation."""
    queue = WorkQueue()
    old, new = make_work(1), make_work(2)
    queue.push(old, order_key(0.0, 0.0, 10.0))  # submitted at 0 with the lowest priority
    queue.push(new, order_key(11.0, 1.0, 10.0))  # 11 s later, the highest
    assert queue.pop() is old


def test_a_discarded_entry_is_skipped_lazily_and_counts_stay_right() -> None:
    """A work taken out of the queue leaves a stale entry that pop() and head() skip."""
    queue = WorkQueue()
    first, second = make_work(1), make_work(2)
    queue.push(first, 0.0)
    queue.push(second, 1.0)
    queue.discard(first)
    assert first._where == NOWHERE
    assert len(queue) == 1
    assert queue.head() is second
    assert queue.pop() is second
    assert queue.pop() is None
    assert queue.heap == []


def test_a_work_queued_again_keeps_only_its_newest_entry() -> None:
    """Pushing a work twice (re-queued) leaves one live entry: the old one is stale."""
    queue = WorkQueue()
    work = make_work(1)
    queue.push(work, 5.0)
    queue.live -= 1  # (what the caller's pop/discard would have done)
    work._where = NOWHERE
    queue.push(work, 1.0)
    assert work._where == QUEUED
    assert list(queue.entries()) == [work]
    assert queue.pop() is work
    assert queue.pop() is None


def test_delayed_work_comes_due_in_time_order() -> None:
    """Delayed works come out once their time has come, earliest first; stale ones never."""
    delayed = Delayed()
    a, b, c = make_work(1), make_work(2), make_work(3)
    delayed.push(a, 10.0)
    delayed.push(b, 5.0)
    delayed.push(c, 7.0)
    assert a._where == DELAYED
    c._where = NOWHERE  # cancelled meanwhile
    assert delayed.next_due() == 5.0
    assert delayed.due_of(a) == 10.0
    assert list(delayed.pop_due(8.0)) == [b]
    assert list(delayed.pop_due(20.0)) == [a]
    assert not delayed


# ---------------------------------------------------------------------------- parking


class FakeArtifact:
    """An artifact that exists when the test says so."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.present = False

    def exists(self) -> bool:
        return self.present

    def mtime(self) -> float:
        return 0.0


def test_swept_work_is_taken_once_in_parking_order() -> None:
    """The swept part is a list with lazy removal: a work taken out leaves a stale entry
    that no sweep returns; one parked again before a sweep is returned once; the list is
    compacted when stale entries outnumber live ones."""
    swept = Swept()
    works = [make_work(n) for n in range(1, 6)]
    for work in works:
        swept.add(work)
    assert len(swept) == 5 and all(work._where == SWEPT for work in works)
    swept.discard(works[1])  # cancelled: its entry goes stale
    works[1]._where = QUEUED
    swept.discard(works[3])
    swept.add(works[3])  # parked again before the sweep: two entries, one live work
    assert len(swept) == 4
    assert [work._seq for work in swept] == [1, 3, 4, 5]
    taken = swept.take()
    assert [work._seq for work in taken] == [1, 3, 4, 5]  # once each, in parking order
    assert all(work._where == NOWHERE for work in taken)
    assert len(swept) == 0 and swept.take() == []
    many = [make_work(n) for n in range(200)]
    for work in many:
        swept.add(work)
    for work in many[:150]:
        swept.discard(work)
    assert len(swept) == 50
    assert len(swept.entries) <= 2 * 50 + 64  # compacted along the way
    assert [work._seq for work in swept.take()] == list(range(150, 200))


def test_parking_sorts_work_by_what_can_wake_it() -> None:
    """Callback-style work is swept; declared work waits precisely for a live producer, or
    as an orphan for outside changes (its first recheck one gap from now)."""
    sweeps = SweepClock(recheck_interval=0.25)
    parking = Parking(sweeps)
    made = FakeArtifact("made")
    outside = FakeArtifact("outside")
    producer = make_work(1)
    producer._outputs = [made]
    parking.add_producer(producer)
    callback = make_work(2)
    parking.park(callback, ("not_ready", "is_ready returned False"), asked_inline=True, now=1.0)
    precise = make_work(3)
    precise._missing = [made]
    parking.park(precise, ("not_ready", "waiting"), asked_inline=True, now=1.0)
    orphan = make_work(4)
    orphan._missing = [outside]
    parking.park(orphan, ("not_ready", "waiting"), asked_inline=True, now=2.0)
    swept = {work._seq for work in parking.swept}
    assert (swept, set(parking.precise), set(parking.orphans)) == ({2}, {3}, {4})
    assert sweeps.last_orphans == 2.0
    assert callback._where == SWEPT and precise._where == orphan._where == PARKED
    assert parking.producer_done(producer) == [precise]
    assert parking.precise == {}
    assert "made" not in parking.waiting_on and "made" not in parking.producers


def test_a_new_producer_moves_its_waiting_consumers_to_precise_parking() -> None:
    """Work that waited for an input nobody made waits precisely once a producer appears."""
    parking = Parking(SweepClock(0.25))
    item = FakeArtifact("x")
    consumer = make_work(1)
    consumer._missing = [item]
    parking.park(consumer, ("not_ready", "waiting"), asked_inline=True, now=0.0)
    assert 1 in parking.orphans  # (the parts key works by number, work._seq)
    producer = make_work(2)
    producer._outputs = [item]
    parking.add_producer(producer)
    assert 1 in parking.precise and 1 not in parking.orphans


def test_forgetting_a_waiting_work_drops_its_keys() -> None:
    """A work re-checked or finished leaves no entry (and no empty key) in waiting_on."""
    parking = Parking(SweepClock(0.25))
    consumer = make_work(1)
    consumer._missing = [FakeArtifact("a"), FakeArtifact("b")]
    parking.park(consumer, ("not_ready", "waiting"), asked_inline=True, now=0.0)
    consumer._missing = [FakeArtifact("b")]
    parking.park(consumer, ("not_ready", "waiting"), asked_inline=True, now=0.0)
    assert set(parking.waiting_on) == {"b"}
    parking.forget_waiting(consumer)
    assert parking.waiting_on == {} and parking.waits_for == {}


def test_sweeps_are_spaced_by_what_the_last_one_cost() -> None:
    """Completion sweeps wait 3x the last sweep's cost (1x once nothing runs); periodic
    rechecks every recheck_interval, stretched to 100x that cost."""
    sweeps = SweepClock(recheck_interval=0.25)
    sweeps.start(0.0)
    sweeps.swept_now(10.0, inline_spent=0.01)
    sweeps.wanted = True
    assert sweeps.wanted_at(running=1) == pytest.approx(10.03)
    assert not sweeps.due(10.02, running=1)
    assert sweeps.due(10.031, running=1)
    sweeps.handler_finished = True
    assert sweeps.wanted_at(running=0) == pytest.approx(10.01)
    assert sweeps.gap() == pytest.approx(1.0)  # 100 x 10 ms > 0.25 s
    sweeps.measured(0.001)  # (a measured cost never lowers the last one)
    assert sweeps.last_cost == pytest.approx(0.01)
    sweeps.poke()
    assert sweeps.due(10.0, running=5)


# ---------------------------------------------------------------------------- limits


class Counting(Limit):
    """A holder that admits up to ``room`` works and records what happens to its holds."""

    kind = "counting"

    def __init__(self, room: int) -> None:
        self.room = room
        self.log: list[tuple[str, Any]] = []

    def reserve(self, work: runcue.WorkUnit) -> Any:
        if self.room <= 0:
            return None
        self.room -= 1
        self.log.append(("reserve", work.params["n"]))
        return work.params["n"]

    def release(self, hold: Any) -> None:
        self.room += 1
        self.log.append(("release", hold))

    def settle(self, hold: Any, work: runcue.WorkUnit, now: float, error: Any) -> None:
        self.room += 1
        self.log.append(("settle", hold))


def test_admission_is_all_or_none() -> None:
    """When a later limit refuses, what earlier ones reserved is released; nothing is held."""
    first, second = Counting(5), Counting(0)
    admission = Admission([first, second])
    assert admission.admit(make_work(1)) is None
    assert first.log == [("reserve", 1), ("release", 1)]
    assert (first.room, second.room) == (5, 0)


def test_holds_go_back_to_the_limits_that_gave_them() -> None:
    """Holds carry their admission: settle and release reach the limits that admitted them,
    even after the service built a new admission."""
    limit = Counting(1)
    admission = Admission([limit])
    holds = admission.admit(make_work(1))
    assert holds is not None and holds[0] is admission
    assert Admission([Counting(1)]).admit(make_work(2)) is not None  # (a newer admission)
    holds[0].settle(holds, make_work(1), 0.0, None)
    assert limit.log == [("reserve", 1), ("settle", 1)]


def test_a_pause_gate_admits_again_exactly_when_it_ends() -> None:
    """A pause refuses until its end (and is asked again before the handler); it never
    shortens."""
    clock = Clock()
    pause = PauseLimit("service 'api'", clock)
    admission = Admission([pause, Counting(10)])
    pause.pause(clock.now + 2.0)
    pause.pause(clock.now + 1.0)  # never shortens
    assert admission.admit(make_work(1)) is None
    assert admission.ready_at(None, clock.now) == clock.now + 2.0
    reason = admission.blocked(make_work(1), clock.now)
    assert reason is not None and reason[0] == "paused"
    clock.now += 2.0
    holds = admission.admit(make_work(1))
    assert holds is not None and admission.still(holds)


def test_a_rate_limit_stamps_starts_at_commit_and_frees_a_slot_one_period_later() -> None:
    """A rate slot is reserved at admission and counted from the commit; the window admits
    again one period after the oldest commit."""
    clock = Clock()
    rate = RateLimit(RateLimiter(parse_rate("2/s"), clock=clock), "2/s", "service 'api'")
    admission = Admission([rate])
    first = admission.admit(make_work(1))
    second = admission.admit(make_work(2))
    assert first is not None and second is not None
    assert admission.admit(make_work(3)) is None
    assert admission.ready_at(None, clock.now) == math.inf  # full of reservations: unknown
    clock.now += 0.5
    assert first[0].commit(first, clock.now) is True  # news: the next free time is known now
    second[0].release(second)  # it will not start after all
    assert admission.admit(make_work(3)) is not None
    assert admission.admit(make_work(4)) is None
    assert admission.ready_at(None, clock.now) == pytest.approx(clock.now + 1.0)
    reason = admission.blocked(make_work(4), clock.now)
    assert reason is not None and reason[0] == "rate_limited"


@pytest.mark.anyio
async def test_a_concurrency_limit_is_the_capacity_limiter_borrowed_per_work() -> None:
    """Each admitted work borrows one token of the real CapacityLimiter on its own behalf;
    settling gives it back; a full limiter refuses and says why."""
    limiter = anyio.CapacityLimiter(2)
    concurrency = ConcurrencyLimit(limiter, "service 'api'")
    admission = Admission([concurrency])
    first, second = make_work(1), make_work(2)
    holds = [admission.admit(first), admission.admit(second)]
    assert limiter.borrowed_tokens == 2
    assert set(limiter.statistics().borrowers) == {first, second}
    assert admission.admit(make_work(3)) is None
    reason = admission.blocked(make_work(3), 0.0)
    assert reason is not None and reason[0] == "service_full"
    held = holds[0]
    assert held is not None
    held[0].settle(held, first, 0.0, None)
    assert limiter.borrowed_tokens == 1
    limiter.total_tokens = 1  # reconfigured down: no new start until one more ends
    assert admission.admit(make_work(3)) is None


@pytest.mark.anyio
async def test_work_admitted_before_its_limit_was_lowered_gives_way_before_it_starts() -> None:
    """Admitted under concurrent=3, not started yet, then the limit falls to 1: ``still``
    says no to each hold while more are borrowed than the limit allows, and yes again once
    the unstarted gave theirs back."""
    limiter = anyio.CapacityLimiter(3)
    admission = Admission([ConcurrencyLimit(limiter, "service 'api'")])
    holds = [admission.admit(make_work(n)) for n in range(3)]
    assert all(hold is not None and admission.still(hold) for hold in holds)
    limiter.total_tokens = 1
    assert not any(hold is not None and admission.still(hold) for hold in holds)
    for hold in holds[1:]:
        assert hold is not None
        admission.release(hold)
    assert holds[0] is not None and admission.still(holds[0])
    assert admission.admit(make_work(3)) is None


class _Collides:
    """A de-duplication key whose hash collides with every other one of its kind."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Collides) and other.name == self.name


def test_twins_find_equal_live_work_and_forget_it_once_it_ends() -> None:
    """The index returns the live twin of equal work (also through a hash collision, where
    params decide), and forgets a work so that equal work is new again."""
    twins = Twins()
    first, again, other = make_work(1, seq=1), make_work(1, seq=2), make_work(2, seq=3)
    assert twins.add(first, ("t", "one")) is None
    assert twins.add(again, ("t", "one")) is first
    assert twins.find(again, ("t", "one")) is first
    assert twins.find(again, None) is None
    # A colliding hash chains: params tell the works apart.
    assert twins.add(other, _Collides("x")) is None
    colliding = make_work(2, seq=4)
    assert twins.add(colliding, _Collides("y")) is other  # equal params: the same work
    assert twins.find(make_work(9, seq=5), _Collides("z")) is None
    third = make_work(3, seq=6)
    assert twins.add(third, _Collides("w")) is None  # a chain of two under one hash
    assert len(twins) == 2
    assert first._dedup_key is not None and other._dedup_key is not None
    twins.forget(first, first._dedup_key)
    assert twins.find(again, ("t", "one")) is None
    twins.forget(other, other._dedup_key)
    assert twins.find(make_work(3, seq=7), _Collides("v")) is third  # the chain shrank to one
    twins.forget(third, hash(_Collides("v")))
    assert len(twins) == 0
