"""The fair queue: round robin across tenants, priority within one, per-tenant rates, no loop."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runcue._errors import InvalidRateError
from runcue._fair import Entry, FairQueue
from runcue._rate import parse_rate

Item = tuple[Hashable, int]  # (tenant, number)


class Liveness:
    """The scheduler's lazy-deletion scheme: an entry is live while its token is current."""

    def __init__(self) -> None:
        self.tokens: dict[Item, int] = {}
        self.calls = 0

    def entry(self, key: float, seq: int, item: Item) -> Entry[Item]:
        """A new entry for ``item``; any older entry of it goes stale."""
        token = self.tokens[item] = self.tokens.get(item, 0) + 1
        return (key, seq, token, item)

    def kill(self, item: Item) -> None:
        """Make every entry of ``item`` stale."""
        self.tokens[item] = self.tokens.get(item, 0) + 1

    def __call__(self, entry: Entry[Item]) -> bool:
        self.calls += 1
        return self.tokens.get(entry[3]) == entry[2]


def _fill(
    queue: FairQueue[Item], live: Liveness, tenant: Hashable, count: int, start: int = 0
) -> None:
    """Queue ``count`` entries for ``tenant`` in FIFO order."""
    for number in range(start, start + count):
        queue.push(tenant, live.entry(0.0, number, (tenant, number)))


def _drain(queue: FairQueue[Item], live: Liveness, now: float = 0.0) -> list[Item]:
    """Pop until nothing can be served."""
    out: list[Item] = []
    while (entry := queue.pop(now, live)) is not None:
        out.append(entry[3])
    return out


# ---------------------------------------------------------------------------- one tenant


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(-3, 3), st.integers(0, 9)),
            st.tuples(st.just("pop"), st.just(0), st.just(0)),
            st.tuples(st.just("kill"), st.just(0), st.integers(0, 9)),
        ),
        max_size=80,
    )
)
def test_property_without_tenants_it_pops_like_the_single_heap(
    ops: list[tuple[str, int, int]],
) -> None:
    """With every entry under tenant None, pops match one heapq heap with lazy deletion."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    heap: list[Entry[Item]] = []
    seq = 0
    for op, key, number in ops:
        if op == "push":
            seq += 1
            entry = live.entry(float(key), seq, (None, number))
            queue.push(None, entry)
            heapq.heappush(heap, entry)
        elif op == "kill":
            live.kill((None, number))
        else:
            expected = None
            while heap:
                candidate = heapq.heappop(heap)
                if live(candidate):
                    expected = candidate
                    break
            assert queue.pop(0.0, live) == expected
    rest = [e for e in (heapq.heappop(heap) for _ in range(len(heap))) if live(e)]
    assert [queue.pop(0.0, live) for _ in rest] == rest
    assert queue.pop(0.0, live) is None
    assert len(queue) == 0


def test_priority_orders_work_within_a_tenant() -> None:
    """Inside one tenant the smallest order key (highest priority) comes first, then FIFO."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    queue.push("a", live.entry(0.0, 1, ("a", 1)))
    queue.push("a", live.entry(-5.0, 2, ("a", 2)))
    queue.push("a", live.entry(0.0, 3, ("a", 3)))
    assert _drain(queue, live) == [("a", 2), ("a", 1), ("a", 3)]


# ---------------------------------------------------------------------------- fairness


def test_a_new_tenant_is_served_within_one_round_of_a_50000_backlog() -> None:
    """With A holding 50,000 entries, B's one entry is popped within the next 2 pops."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "A", 50_000)
    for _ in range(1234):
        queue.pop(0.0, live)
    queue.push("B", live.entry(0.0, 10**6, ("B", 0)))
    popped = [entry[3] for entry in (queue.pop(0.0, live), queue.pop(0.0, live)) if entry]
    assert ("B", 0) in popped
    assert len(queue) == 50_000 - 1234 - 1


def test_a_new_tenant_among_several_backlogs_waits_at_most_one_round() -> None:
    """With three tenants holding backlogs, a fourth's entry comes within the next 4 pops."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    for tenant in ("A", "B", "C"):
        _fill(queue, live, tenant, 20_000)
    for _ in range(1000):
        queue.pop(0.0, live)
    queue.push("D", live.entry(0.0, 0, ("D", 0)))
    popped = [entry[3] for entry in (queue.pop(0.0, live) for _ in range(4)) if entry]
    assert ("D", 0) in popped


def test_backlogged_tenants_alternate() -> None:
    """Two tenants with work are served in turn, whatever each queued."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "A", 100)
    _fill(queue, live, "B", 3)
    tenants = [item[0] for item in _drain(queue, live)]
    assert tenants[:6] == ["A", "B", "A", "B", "A", "B"]
    assert tenants[6:] == ["A"] * 97


def test_a_tenant_submitting_one_at_a_time_cannot_starve_another() -> None:
    """A tenant whose queue empties after each pop gets no credit for having been idle."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "A", 1000)
    served = Counter[Hashable]()
    for number in range(200):
        queue.push("B", live.entry(0.0, number, ("B", number)))
        entry = queue.pop(0.0, live)
        assert entry is not None
        served[entry[3][0]] += 1
    assert abs(served["A"] - served["B"]) <= 1


def test_weights_share_pops_in_proportion() -> None:
    """A tenant of weight 3 gets three pops for each one of a tenant of weight 1."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(weights={"gold": 3})
    _fill(queue, live, "gold", 3000)
    _fill(queue, live, "free", 3000)
    first = Counter(queue.pop(0.0, live)[3][0] for _ in range(400))  # type: ignore[index]
    assert first == {"gold": 300, "free": 100}


def test_default_weight_and_configure() -> None:
    """configure() changes a known tenant's weight; others get the default weight."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(default_weight=2)
    _fill(queue, live, "a", 100)
    _fill(queue, live, "b", 100)
    queue.configure("b", weight=1)
    served = Counter(queue.pop(0.0, live)[3][0] for _ in range(30))  # type: ignore[index]
    assert served == {"a": 20, "b": 10}


@settings(max_examples=150, deadline=None)
@given(
    backlogs=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=6),
    before=st.integers(min_value=0, max_value=300),
)
def test_property_a_first_entry_waits_at_most_one_round(backlogs: list[int], before: int) -> None:
    """Whatever others queued, a tenant's first entry comes within (tenants with work) pops."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    for index, count in enumerate(backlogs):
        _fill(queue, live, index, count)
    for _ in range(before):
        queue.pop(0.0, live)
    with_work = sum(1 for _ in queue.tenants()) + 1
    queue.push("new", live.entry(0.0, 0, ("new", 0)))
    for _ in range(with_work):
        entry = queue.pop(0.0, live)
        if entry is not None and entry[3] == ("new", 0):
            return
    pytest.fail("the new tenant's first entry waited more than one round")


# ---------------------------------------------------------------------------- stale entries


def test_stale_entries_are_skipped_and_counted_until_dropped() -> None:
    """A stale entry is dropped when it reaches the top; len counts it until then."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "a", 3)
    live.kill(("a", 0))
    live.kill(("a", 2))
    assert len(queue) == 3
    assert _drain(queue, live) == [("a", 1)]
    assert len(queue) == 0


def test_a_tenant_with_only_stale_entries_gives_its_turn_away() -> None:
    """A tenant whose entries all went stale does not hold up the others."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "dead", 5)
    _fill(queue, live, "alive", 1)
    for number in range(5):
        live.kill(("dead", number))
    assert _drain(queue, live) == [("alive", 0)]
    assert list(queue.tenants()) == []


def test_pops_call_is_live_once_per_entry() -> None:
    """Popping a 50,000-entry backlog asks is_live about each entry once: no scans."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "A", 25_000)
    _fill(queue, live, "B", 25_000)
    assert len(_drain(queue, live)) == 50_000
    assert live.calls == 50_000


# ---------------------------------------------------------------------------- rates


def test_a_tenant_over_its_rate_is_held_and_others_served() -> None:
    """A tenant that spent its rate waits for its next free time while others go on."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates={"A": "2/10s"})
    _fill(queue, live, "A", 10)
    _fill(queue, live, "B", 10)
    order = []
    for _ in range(6):
        entry = queue.pop(0.0, live)
        assert entry is not None
        queue.commit(entry[3][0], 0.0)
        order.append(entry[3][0])
    assert order == ["A", "B", "A", "B", "B", "B"]
    assert queue.next_ready_at(0.0) == 10.0
    entry = queue.pop(10.0, live)
    assert entry is not None
    assert entry[3] == ("A", 2)


def test_only_rate_held_tenants_left_pop_returns_none() -> None:
    """When every tenant with work is held by its rate, pop returns None until its time."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(default_rate="1/5s")
    _fill(queue, live, "A", 2)
    entry = queue.pop(0.0, live)
    assert entry is not None
    assert not queue.commit("A", 1.0)
    assert queue.pop(2.0, live) is None
    assert queue.next_ready_at(2.0) == 6.0
    assert queue.pop(6.0, live) is not None


def test_reservations_hold_a_tenant_until_they_commit() -> None:
    """A tenant full of reservations waits for a commit, which says to look again."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates={"A": "1/5s"})
    _fill(queue, live, "A", 2)
    assert queue.pop(0.0, live) is not None
    assert queue.pop(0.0, live) is None
    assert queue.next_ready_at(0.0) == math.inf
    assert queue.commit("A", 1.0)
    assert queue.next_ready_at(1.0) == 6.0


def test_release_gives_the_start_back() -> None:
    """A popped entry that will not start gives its reserved start back at once."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates={"A": "1/5s"})
    _fill(queue, live, "A", 2)
    first = queue.pop(0.0, live)
    assert first is not None
    assert queue.pop(0.0, live) is None
    assert queue.release("A", 0.5)
    queue.push("A", first)  # back in the queue: it did not start
    assert queue.pop(0.5, live) == first


def test_commit_and_release_without_a_rate_are_no_ops() -> None:
    """For tenants without a rate, commit and release tell nothing."""
    queue: FairQueue[Item] = FairQueue()
    assert not queue.commit("nobody", 0.0)
    assert not queue.release("nobody", 0.0)


def test_configure_a_rate_keeps_the_starts_already_made() -> None:
    """Changing a tenant's rate keeps its starts inside the window and its reservations."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates={"A": "2/10s"})
    _fill(queue, live, "A", 5)
    for _ in range(2):
        queue.pop(0.0, live)
        queue.commit("A", 0.0)
    queue.configure("A", rate="3/10s")
    assert queue.pop(1.0, live) is not None
    queue.configure("A", rate="4/10s")  # the reservation is carried over
    assert queue.pop(1.0, live) is not None
    assert queue.pop(1.0, live) is None


def test_peek_shows_the_next_entry_without_taking_it() -> None:
    """peek returns what pop would, reserves nothing and changes no turn."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates={"A": "1/5s"})
    _fill(queue, live, "A", 2)
    _fill(queue, live, "B", 2)
    assert queue.peek(0.0, live) == queue.peek(0.0, live)
    assert queue.peek(0.0, live) == queue.pop(0.0, live)
    assert len(queue) == 3


# ---------------------------------------------------------------------------- memory


def test_many_short_lived_tenants_are_forgotten() -> None:
    """Tenants that come and go (one work each) leave no state behind."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "steady", 5)
    for number in range(10_000):
        queue.push(number, live.entry(0.0, number, (number, 0)))
        queue.pop(0.0, live)
    _drain(queue, live)
    assert queue.remembered() <= 2


def test_rate_limited_tenants_are_forgotten_once_their_window_is_empty() -> None:
    """A tenant with a rate is kept while its window holds starts, then forgotten."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(default_rate="1/10s")
    for number in range(100):
        queue.push(number, live.entry(0.0, 0, (number, 0)))
        queue.pop(float(number), live)
        queue.commit(number, float(number))
    assert 5 <= queue.remembered() <= 12
    queue.pop(200.0, live)
    assert queue.remembered() == 0


def test_once_nothing_waits_every_idle_tenant_is_forgotten_at_once() -> None:
    """When the last tenant with work empties, every idle tenant is forgotten at once."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    for tenant in range(50):
        _fill(queue, live, tenant, 3)
    queue.clear()
    assert queue.remembered() == 0
    _fill(queue, live, "A", 4)
    _fill(queue, live, "B", 1)
    _drain(queue, live)
    assert queue.remembered() == 0
    _fill(queue, live, "late", 1)
    assert _drain(queue, live) == [("late", 0)]


def test_configuration_outlives_a_forgotten_tenant() -> None:
    """A configured weight applies again when a forgotten tenant comes back."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(weights={"gold": 2})
    _fill(queue, live, "gold", 1)
    _drain(queue, live)
    _fill(queue, live, "gold", 100)
    _fill(queue, live, "free", 100)
    served = Counter(queue.pop(0.0, live)[3][0] for _ in range(30))  # type: ignore[index]
    assert served == {"gold": 20, "free": 10}


def test_clear_drops_every_entry() -> None:
    """clear() empties the queue; pushing afterwards works as before."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "a", 3)
    _fill(queue, live, "b", 3)
    queue.clear()
    assert len(queue) == 0
    assert queue.size("a") == 0
    assert queue.pop(0.0, live) is None
    _fill(queue, live, "b", 1, start=10)
    assert _drain(queue, live) == [("b", 10)]


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("weight", [0, -1, math.inf, math.nan, True, "2"])
def test_bad_weights_are_refused(weight: object) -> None:
    """Weights are finite numbers > 0."""
    with pytest.raises(ValueError, match="weight"):
        FairQueue(weights={"a": weight})  # type: ignore[dict-item]


def test_bad_rates_are_refused() -> None:
    """A tenant's rate uses the rate grammar; a bad string raises InvalidRateError."""
    with pytest.raises(InvalidRateError):
        FairQueue(default_rate="often")
    with pytest.raises(InvalidRateError):
        FairQueue().configure("a", rate="0/min")


def test_views_count_entries_per_tenant() -> None:
    """len, size and tenants describe what is held."""
    live = Liveness()
    queue: FairQueue[Item] = FairQueue()
    _fill(queue, live, "a", 2)
    _fill(queue, live, None, 1)
    assert (len(queue), queue.size("a"), queue.size(None), queue.size("zzz")) == (3, 2, 1, 0)
    assert set(queue.tenants()) == {"a", None}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_rates_hold_and_no_live_entry_is_lost(data: st.DataObject) -> None:
    """Random use keeps rates, pops each live entry once, returns None only when held."""
    # Random pushes, pops, commits, releases (pushed back), stale entries and time.
    rates: dict[Hashable, str] = {0: "2/1s", 1: "1/2s"}  # tenants 2 and 3 have no rate
    live = Liveness()
    queue: FairQueue[Item] = FairQueue(rates=rates)
    now, seq = 0.0, 0
    pending: set[Item] = set()
    taken: list[Item] = []
    commits: dict[Hashable, list[float]] = {0: [], 1: []}
    for _ in range(data.draw(st.integers(1, 80))):
        action = data.draw(st.sampled_from(["push", "push", "pop", "pop", "kill", "wait"]))
        if action == "push":
            tenant: Hashable = data.draw(st.integers(0, 3))
            seq += 1
            item: Item = (tenant, seq)
            queue.push(tenant, live.entry(float(data.draw(st.integers(0, 2))), seq, item))
            pending.add(item)
        elif action == "kill" and pending:
            item = data.draw(st.sampled_from(sorted(pending, key=repr)))
            live.kill(item)
            pending.discard(item)
        elif action == "wait":
            now += data.draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
        elif action == "pop":
            entry = queue.pop(now, live)
            if entry is None:
                for tenant in {item[0] for item in pending}:
                    assert tenant in rates  # only a rate can hold live work back
                continue
            item = entry[3]
            assert item in pending
            if data.draw(st.booleans()):
                queue.commit(item[0], now)
                pending.discard(item)
                taken.append(item)
                if item[0] in commits:
                    commits[item[0]].append(now)
            else:
                queue.release(item[0], now)
                queue.push(item[0], entry)
    now += 100.0
    while pending:
        entry = queue.pop(now, live)
        if entry is None:
            now = min(queue.next_ready_at(now), now + 100.0)
            continue
        queue.commit(entry[3][0], now)
        pending.discard(entry[3])
        taken.append(entry[3])
        if entry[3][0] in commits:
            commits[entry[3][0]].append(now)
    assert queue.pop(now, live) is None
    assert len(taken) == len(set(taken))
    for tenant, times in commits.items():
        (spec,) = parse_rate(rates[tenant])
        for index, start in enumerate(times):
            inside = [t for t in times[index:] if t < start + spec.period]
            assert len(inside) <= spec.limit
