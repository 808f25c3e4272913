"""A shared service's cost windows kept in the store (``shared=True`` with ``costs=``): what
the cue sends at each grant, when it settles (once, to what the handler charged, before the
lease goes back), what a start that never ran costs, retries of a settlement the store did not
take, the error for a store that keeps no cost windows, and two cues sharing one token budget
through a real Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import runcue
from redis_helpers import RedisServer, redis_server_running
from runcue._rate import RateSpec

pytestmark = pytest.mark.anyio


class CostStoreFake:
    """An in-memory CostStore that grants every start and records every call in order;
    ``failing`` settlements raise first; ``gate`` holds acquire round trips in flight."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failing = 0
        self.gate: anyio.Event | None = None
        self.asked = anyio.Event()
        self.settled = anyio.Event()

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
        costs: Sequence[tuple[str, RateSpec, float]] = (),
    ) -> float:
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(("acquire", lease, tuple(costs)))
        return 0.0

    async def settle(self, service: str, lease: str, actual: Mapping[str, float]) -> None:
        if self.failing:
            self.failing -= 1
            self.calls.append(("settle failed", lease, dict(actual)))
            raise ConnectionError("the store is away")
        self.calls.append(("settle", lease, dict(actual)))
        self.settled.set()

    async def renew(self, service: str, leases: list[str], ttl: float) -> None:
        pass

    async def release(self, service: str, lease: str) -> None:
        self.calls.append(("release", lease))

    async def pause(self, service: str, seconds: float) -> None:
        pass

    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        return True

    async def renew_claims(self, keys: list[str], owner: str, ttl: float) -> None:
        pass

    async def release_claim(self, key: str, owner: str) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == kind]


class OldStore(CostStoreFake):
    """A store written before cost windows: no ``settle``."""

    settle = None  # type: ignore[assignment]


TOKENS = {"tokens": "1000/min;50000/day"}


def llm_cue(store: Any, **options: Any) -> runcue.Cue:
    cue = runcue.Cue(store=store, **options)
    cue.service("llm", costs=TOKENS, concurrent=2, shared=True)
    return cue


async def test_a_store_without_cost_windows_is_refused_for_shared_costs() -> None:
    """shared=True with costs= on a store that is not a CostStore fails at cue.service(),
    naming the store and the two fixes; without shared=True the costs count in-process."""
    store = OldStore()
    assert not isinstance(store, runcue.CostStore)
    cue = runcue.Cue(store=store)
    with pytest.raises(ValueError, match=r"OldStore does not keep any.*RedisStore.*shared=True"):
        cue.service("llm", costs=TOKENS, shared=True)
    assert "llm" not in cue.stats().services
    cue.service("llm", costs=TOKENS)  # counted in this process: fine


async def test_each_grant_carries_the_estimate_and_settles_to_the_charge() -> None:
    """Every cost window goes to the store with the work's estimate (0 for a dimension it
    does not estimate); the attempt's end settles to what the handler charged, before the
    lease goes back; a handler that charges nothing leaves the estimate (no settle call)."""
    store = CostStoreFake()
    cue = llm_cue(store)

    @cue.task("ask", uses="llm", cost={"tokens": 300})
    async def ask(work: runcue.WorkUnit) -> None:
        if work.params["charge"] is not None:
            work.charge(tokens=work.params["charge"])

    with anyio.fail_after(5):
        async with cue:
            charged = await cue.submit("ask", {"charge": 120})
            await cue.join()
            silent = await cue.submit("ask", {"charge": None})
            await cue.join()
    first, second = store.of("acquire")
    minute, day = RateSpec(1000, 60.0), RateSpec(50000, 86400.0)
    assert first[2] == (("tokens", minute, 300.0), ("tokens", day, 300.0))
    lease = first[1]
    assert charged in lease and silent in second[1]
    mine = [call for call in store.calls if call[1] == lease]
    assert mine == [
        ("acquire", lease, first[2]),
        ("settle", lease, {"tokens": 120.0}),
        ("release", lease),
    ]
    assert [call[0] for call in store.calls if call[1] == second[1]] == ["acquire", "release"]


async def test_a_task_without_estimate_sends_zero_and_its_charge_is_settled() -> None:
    """No cost= on the task: the store records 0 (holding nothing back), and what the
    handler charges is settled, so it counts for every process."""
    store = CostStoreFake()
    cue = llm_cue(store)

    @cue.task("ask", uses="llm")
    async def ask(work: runcue.WorkUnit) -> None:
        work.charge(tokens=42)

    with anyio.fail_after(5):
        async with cue:
            await cue.submit("ask")
            await cue.join()
    (grant,) = store.of("acquire")
    assert [estimate for _, _, estimate in grant[2]] == [0.0, 0.0]
    assert store.of("settle") == [("settle", grant[1], {"tokens": 42.0})]


async def test_a_charge_in_an_undeclared_dimension_is_not_sent_to_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shared service settles only the dimensions it declares: the rest of a charge is
    dropped with a warning, as for a local service."""
    store = CostStoreFake()
    cue = llm_cue(store)

    @cue.task("ask", uses="llm")
    async def ask(work: runcue.WorkUnit) -> None:
        work.charge(tokens=42, bytes=7)

    with anyio.fail_after(5):
        async with cue:
            await cue.submit("ask")
            await cue.join()
    (grant,) = store.of("acquire")
    assert store.of("settle") == [("settle", grant[1], {"tokens": 42.0})]
    assert "charged 'bytes', which service 'llm' does not declare" in caplog.text


async def test_a_grant_whose_work_never_started_settles_to_zero() -> None:
    """Work cancelled while its grant was in flight never runs: its start costs nothing."""
    store = CostStoreFake()
    store.gate = anyio.Event()
    cue = llm_cue(store)
    ran: list[str] = []

    @cue.task("ask", uses="llm", cost={"tokens": 300})
    async def ask(work: runcue.WorkUnit) -> None:
        ran.append(work.id)

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("ask")
            await store.asked.wait()
            assert await cue.cancel(work_id)
            store.gate.set()
            await store.settled.wait()
    assert ran == []
    (grant,) = store.of("acquire")
    assert store.of("settle") == [("settle", grant[1], {"tokens": 0.0})]


async def test_cancelled_while_running_keeps_the_estimate_or_what_it_charged() -> None:
    """A handler cancelled mid-call may have spent: without a charge the estimate stands (no
    settle), with one the charge is settled."""
    store = CostStoreFake()
    cue = llm_cue(store)
    running = [anyio.Event(), anyio.Event()]

    @cue.task("ask", uses="llm", cost={"tokens": 300})
    async def ask(work: runcue.WorkUnit) -> None:
        if work.params["charge"]:
            work.charge(tokens=250)
        running[work.params["n"]].set()
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with cue:
            silent = await cue.submit("ask", {"n": 0, "charge": False})
            charged = await cue.submit("ask", {"n": 1, "charge": True})
            for event in running:
                await event.wait()
            await cue.cancel(silent)
            await cue.cancel(charged)
            await store.settled.wait()
            await cue.join()
    settles = store.of("settle")
    assert len(settles) == 1
    assert charged in settles[0][1] and settles[0][2] == {"tokens": 250.0}
    assert len(store.of("release")) == 2


async def test_a_settlement_the_store_did_not_take_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store fails the first two settlements: the cue warns once and retries with its
    renewals until one lands."""
    store = CostStoreFake()
    store.failing = 2
    cue = llm_cue(store, lease_ttl=0.3)

    @cue.task("ask", uses="llm", cost={"tokens": 300})
    async def ask(work: runcue.WorkUnit) -> None:
        work.charge(tokens=10)

    with anyio.fail_after(5):
        async with cue:
            await cue.submit("ask")
            await cue.join()
            await store.settled.wait()
    (grant,) = store.of("acquire")
    lease = grant[1]
    assert [call[0] for call in store.calls if call[0].startswith("settle")] == [
        "settle failed",
        "settle failed",
        "settle",
    ]
    assert store.of("settle") == [("settle", lease, {"tokens": 10.0})]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("settling the cost" in message for message in warnings) == 1


async def test_a_settlement_past_its_longest_window_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A settlement that never lands is retried only while its start is in a cost window;
    then it is dropped with a warning, and the keeper rests."""
    store = CostStoreFake()
    store.failing = 10**6
    cue = runcue.Cue(store=store, lease_ttl=0.15)
    cue.service("llm", costs={"tokens": "1000/0.3s"}, shared=True)

    @cue.task("ask", uses="llm", cost={"tokens": 300})
    async def ask(work: runcue.WorkUnit) -> None:
        work.charge(tokens=10)

    dropped = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "never settled" in record.getMessage():
                dropped.set()

    watch = Watch()
    logging.getLogger("runcue").addHandler(watch)
    try:
        with anyio.fail_after(5):
            async with cue:
                await cue.submit("ask")
                await dropped.wait()
                tries = len(store.of("settle failed"))
                assert cue._engine.fleet is not None and not cue._engine.fleet.unsettled
    finally:
        logging.getLogger("runcue").removeHandler(watch)
    assert 2 <= tries <= 10  # the first, then one per renewal round (every 50 ms) for 0.3 s


# ---------------------------------------------------------------------------- real Redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server_running(tmp_path) as running:
        yield running


async def test_two_cues_share_one_token_budget_and_a_refund_frees_it(
    server: RedisServer,
) -> None:
    """Two cues on one Redis, 1,000 tokens per minute between them. The first spends an
    estimate of 900 but charges 100: the second's 800 starts at once, not a minute later.
    Then the first's 500 waits for the window (the budget is shared): max_wait fails it."""
    cues = []
    for _ in range(2):
        cue = runcue.Cue(store=runcue.RedisStore(server.url, namespace="two"))
        cue.service("llm", costs={"tokens": "1000/min"}, shared=True, max_wait=0.5)

        @cue.task("ask", uses="llm", cost=lambda work: {"tokens": work.params["estimate"]})
        async def ask(work: runcue.WorkUnit) -> str:
            if "actual" in work.params:
                work.charge(tokens=work.params["actual"])
            return work.id

        cues.append(cue)
    first, second = cues
    with anyio.fail_after(10):
        async with first, second:
            one = await first.submit("ask", {"estimate": 900, "actual": 100})
            assert await first.wait(one) == one
            two = await second.submit("ask", {"estimate": 800})
            assert await second.wait(two) == two
            three = await first.submit("ask", {"estimate": 500})
            with pytest.raises(runcue.QuotaExhausted, match="tokens"):
                await first.wait(three)
