"""Cost windows kept in Redis: exact admission of amounts (tokens) across stores and processes,
settlement on the actual amount, debt, exact waits, expiry and restarts.

Every check reads the store's own records where it can (the start times are the server's), so
the assertions are exact; the host clock is the server's clock (one machine), which bounds when
a settlement took effect between sending it and its answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import runcue
from redis_helpers import Record, RedisServer, Worker, read_records, redis_server_running
from runcue._errors import CostTooLargeError
from runcue._rate import RateSpec
from runcue._store import CostStore, Grant, Store

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.anyio  # (every test starts its server through require_redis())

KEEPER = RateSpec(10**9, 60.0)  # a window that never binds: the store keeps every start in it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, stopped after the test."""
    with redis_server_running(tmp_path) as running:
        yield running


@pytest.fixture
def plain(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test server, to read what the store wrote."""
    import redis

    with redis.Redis.from_url(server.url) as client:
        yield client


def make_store(server: RedisServer, **options: Any) -> runcue.RedisStore:
    return runcue.RedisStore(server.url, namespace="test", **options)


def tokens(estimate: float, *specs: RateSpec) -> list[tuple[str, RateSpec, float]]:
    """The ``costs`` argument for one dimension, ``tokens``, with these windows."""
    return [("tokens", spec, estimate) for spec in specs]


async def take(
    store: runcue.RedisStore, lease: str, costs: Sequence[tuple[str, RateSpec, float]], **kw: Any
) -> float:
    """One acquire of service ``api`` with these costs (no rate, no lease unless given)."""
    kw.setdefault("windows", ())
    kw.setdefault("concurrent", None)
    kw.setdefault("ttl", 5)
    return await store.acquire("api", lease=lease, costs=costs, **kw)


async def take_when_free(
    store: runcue.RedisStore, lease: str, costs: Sequence[tuple[str, RateSpec, float]]
) -> None:
    """Ask until granted; after the first wait only a sleep's rounding may refuse it again."""
    wait = await take(store, lease, costs)
    with anyio.fail_after(2):
        while wait > 0:
            await anyio.sleep(wait)
            wait = await take(store, lease, costs)
            assert wait <= 0.001


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sums(plain: redis.Redis, service: str = "api") -> dict[str, float]:
    """Each cost window's running sum, as the store keeps it."""
    state = plain.hgetall(f"test:svc:{service}:costs:sums")
    return {text(key): float(text(value)) for key, value in state.items() if text(key) != "at"}


def start_times(plain: redis.Redis, service: str = "api") -> dict[str, float]:
    """Every recorded start: lease -> the server's time of its admission (seconds)."""
    recorded = plain.zrange(f"test:svc:{service}:costs", 0, -1, withscores=True)
    return {text(entry[0]): float(entry[1]) / 1e6 for entry in recorded}


# ---------------------------------------------------------------------------- the model


@dataclass
class Start:
    """One granted start as the audit saw it, at the server's time of its admission."""

    lease: str
    at: float
    estimate: float
    actual: float | None = None
    settle_sent: float = float("inf")  # the settlement took effect between these two
    settle_answered: float = float("inf")

    def amount_seen_at(self, when: float) -> float:
        """What the store counted for this start at ``when``: the estimate before the
        settlement, the actual after; either while the settlement was on its way (then the
        smaller, so that the model never claims more than the store could have seen)."""
        if self.actual is None or when < self.settle_sent:
            return self.estimate
        if when > self.settle_answered:
            return self.actual
        return min(self.estimate, self.actual)


def check_admissions(starts: Sequence[Start], spec: RateSpec) -> float:
    """Every admission kept the invariant: what the window held just before it, plus its
    estimate, was within the limit. Returns the fullest the window was at an admission."""
    ordered = sorted(starts, key=lambda start: start.at)
    fullest = 0.0
    for index, start in enumerate(ordered):
        if start.estimate <= 0:
            continue
        held = sum(
            other.amount_seen_at(start.at)
            for other in ordered[:index]
            if start.at - spec.period < other.at < start.at
        )
        assert held + start.estimate <= spec.limit + 1e-6, (
            f"{start.lease} admitted at {start.at:.6f} with {held:g} held in {spec}"
        )
        fullest = max(fullest, held + start.estimate)
    return fullest


def check_final_windows(starts: Sequence[Start], spec: RateSpec) -> None:
    """No window of ``spec.period`` holds more than ``spec.limit`` of the final amounts."""
    ordered = sorted(starts, key=lambda start: start.at)
    for index, start in enumerate(ordered):
        inside = [o for o in ordered[: index + 1] if o.at > start.at - spec.period]
        total = sum(o.actual if o.actual is not None else o.estimate for o in inside)
        assert total <= spec.limit + 1e-6, f"{total:g} in the window ending at {start.at:.6f}"


def model(
    grants: Mapping[str, float],
    settlements: Mapping[str, tuple[float, float, float]],
    recorded: Mapping[str, float],
    amounts: Mapping[Any, Any],
) -> list[Start]:
    """The audit (grants: lease -> estimate; settlements: lease -> (sent, answered, actual))
    joined with the store's records (start times and final amounts), which must agree."""
    assert set(recorded) == set(grants), "the store recorded other starts than it granted"
    starts = []
    for lease, estimate in grants.items():
        start = Start(lease, recorded[lease], estimate)
        if lease in settlements:
            start.settle_sent, start.settle_answered, start.actual = settlements[lease]
        final = start.actual if start.actual is not None else estimate
        dimension, _, amount = text(amounts[lease.encode()]).partition("=")
        assert (dimension, float(amount)) == ("tokens", final)
        starts.append(start)
    return starts


# ---------------------------------------------------------------------------- one server


async def test_redis_store_keeps_costs_and_old_stores_still_are_stores(server: RedisServer) -> None:
    """RedisStore is a CostStore; a store without ``settle`` is a Store but not a CostStore."""

    class OldStore:
        async def acquire(self, service: str, **kw: Any) -> float:
            return 0.0

        async def renew(self, service: str, leases: list[str], ttl: float) -> None: ...
        async def release(self, service: str, lease: str) -> None: ...
        async def pause(self, service: str, seconds: float) -> None: ...
        async def claim(self, key: str, owner: str, ttl: float) -> bool:
            return False

        async def renew_claims(self, keys: list[str], owner: str, ttl: float) -> None: ...
        async def release_claim(self, key: str, owner: str) -> None: ...
        async def aclose(self) -> None: ...

    store = make_store(server)
    assert isinstance(store, CostStore) and isinstance(store, Store)
    assert isinstance(OldStore(), Store) and not isinstance(OldStore(), CostStore)
    assert runcue.CostStore is CostStore
    await store.aclose()


async def test_cost_windows_are_exact_under_concurrent_acquirers(
    server: RedisServer, plain: redis.Redis
) -> None:
    """Three stores with four acquirers each, random estimates settled on random actuals at
    most the estimate: every admission fits what the window held, and no window of final
    amounts holds more than the limit."""
    window = RateSpec(500, 0.3)
    stores = [make_store(server) for _ in range(3)]
    grants: dict[str, float] = {}
    settlements: dict[str, tuple[float, float, float]] = {}
    chance = random.Random(7)

    async def acquirer(store: runcue.RedisStore, name: str) -> None:
        serial = 0
        while len(grants) < 80:
            serial += 1
            lease, estimate = f"{name}-{serial}", float(chance.randint(20, 100))
            while (wait := await take(store, lease, tokens(estimate, window, KEEPER))) > 0:
                assert wait <= window.period
                await anyio.sleep(wait)
            grants[lease] = estimate
            await anyio.sleep(chance.uniform(0, 0.03))
            actual = float(round(estimate * chance.uniform(0.1, 1.0)))
            sent = time.time()
            await store.settle("api", lease, {"tokens": actual})
            settlements[lease] = (sent, time.time(), actual)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for index, store in enumerate(stores):
                for task in range(4):
                    tg.start_soon(acquirer, store, f"s{index}t{task}")
    amounts = plain.hgetall("test:svc:api:costs:amounts")
    starts = model(grants, settlements, start_times(plain), amounts)
    fullest = check_admissions(starts, window)
    assert fullest > 0.8 * window.limit  # the budget was contended, not idle
    check_final_windows(starts, window)
    for store in stores:
        await store.aclose()


async def test_a_refund_frees_room_at_once_and_a_charge_delays(
    server: RedisServer, plain: redis.Redis
) -> None:
    """Settling below the estimate lets the next start in at once; settling above it is debt
    that holds later starts back until the start that caused it leaves the window."""
    store = make_store(server)
    window = RateSpec(100, 0.6)
    assert await take(store, "a", tokens(80, window)) == 0
    await anyio.sleep(0.2)  # so that "b" leaves the window well after "a"
    refused = await take(store, "b", tokens(50, window))
    assert 0.3 < refused <= 0.4  # until "a" leaves
    await store.settle("api", "a", {"tokens": 30})
    assert sums(plain) == {"tokens:600000": 30}
    assert await take(store, "b", tokens(50, window)) == 0  # 30 + 50 fit at once
    await store.settle("api", "b", {"tokens": 90})  # debt: 30 + 90 = 120 held
    assert sums(plain) == {"tokens:600000": 120}
    before = time.time()
    wait = await take(store, "c", tokens(1, window))
    after = time.time()
    times = start_times(plain)
    # 21 must leave: "a" (30) is enough, so the window has room when "a" leaves.
    assert times["a"] + 0.6 - after <= wait <= times["a"] + 0.6 - before
    await take_when_free(store, "c", tokens(1, window))  # 90 + 1 <= 100
    assert await take(store, "d", tokens(10, window)) > 0  # 91 + 10 > 100: "b" must leave
    await store.aclose()


async def test_a_dimension_estimated_at_zero_is_not_held_back(
    server: RedisServer, plain: redis.Redis
) -> None:
    """A work estimated at 0 in a full dimension starts; its actual is still charged there."""
    store = make_store(server)
    full = RateSpec(100, 60.0)
    images = RateSpec(2, 60.0)

    def costs(token_estimate: float, image_estimate: float) -> list[tuple[str, RateSpec, float]]:
        return [("tokens", full, token_estimate), ("images", images, image_estimate)]

    assert await take(store, "a", costs(100, 0)) == 0
    assert await take(store, "b", costs(1, 0)) > 50  # tokens are full
    assert await take(store, "c", costs(0, 1)) == 0  # images only: tokens don't hold it back
    assert await take(store, "d", costs(0, 1)) == 0
    assert await take(store, "e", costs(0, 1)) > 50  # now images are full
    assert await take(store, "f", costs(0, 0)) == 0  # nothing needed: always admitted
    await store.settle("api", "f", {"tokens": 40, "images": 1})
    assert sums(plain) == {"tokens:60000000": 140, "images:60000000": 3}
    await store.aclose()


async def test_cost_windows_admit_together_or_not_at_all(
    server: RedisServer, plain: redis.Redis
) -> None:
    """A start one window refuses is recorded in no window, no rate window and no lease; an
    admitted one is in all of them."""
    store = make_store(server)
    short, long = RateSpec(100, 0.3), RateSpec(150, 60.0)
    rate = (RateSpec(10, 60.0),)
    assert await take(store, "a", tokens(100, short, long), windows=rate, concurrent=5) == 0
    wait = await take(store, "b", tokens(50, short, long), windows=rate, concurrent=5)
    assert 0 < wait <= 0.3  # the short window is full
    assert sums(plain) == {"tokens:300000": 100, "tokens:60000000": 100}
    assert plain.zcard("test:svc:api:rate:60000000") == 1
    assert plain.zrange("test:svc:api:leases", 0, -1) == [b"a"]
    await anyio.sleep(wait)
    assert await take(store, "b", tokens(50, short, long), windows=rate, concurrent=5) == 0
    assert await take(store, "c", tokens(10, short, long), windows=rate, concurrent=5) > 50
    assert sums(plain) == {"tokens:300000": 50, "tokens:60000000": 150}
    assert plain.zcard("test:svc:api:rate:60000000") == 2
    assert sorted(plain.zrange("test:svc:api:leases", 0, -1)) == [b"a", b"b"]
    assert set(start_times(plain)) == {"a", "b"}
    # A full rate window refuses a start that the cost windows would admit, and it leaves
    # no trace in them either.
    one_start = (RateSpec(2, 60.0),)
    assert await take(store, "d", tokens(0, short, long), windows=one_start) > 50
    assert set(start_times(plain)) == {"a", "b"}
    await store.aclose()


async def test_waits_are_exact(server: RedisServer, plain: redis.Redis) -> None:
    """The wait a refusal returns is when the estimate fits: asking a little earlier is
    refused, asking then is granted."""
    store = make_store(server)
    window = RateSpec(100, 0.5)
    for lease, amount in (("a", 40), ("b", 30), ("c", 30)):
        assert await take(store, lease, tokens(amount, window)) == 0
        await anyio.sleep(0.05)
    await store.settle("api", "a", {"tokens": 20})  # the window holds 20 + 30 + 30 = 80
    before = time.time()
    wait = await take(store, "d", tokens(70, window))
    after = time.time()
    times = start_times(plain)
    # 50 must leave: "a" (20) is not enough, "a" and "b" (50) are, exactly: the room is
    # there when "b" leaves the window (30 + 70 = the limit).
    assert times["b"] + 0.5 - after <= wait <= times["b"] + 0.5 - before
    await anyio.sleep(wait - 0.03)
    assert 0 < await take(store, "d", tokens(70, window)) <= 0.03
    await anyio.sleep(0.03)
    await take_when_free(store, "d", tokens(70, window))
    await store.aclose()


async def test_an_estimate_that_never_fits_is_an_error(
    server: RedisServer, plain: redis.Redis
) -> None:
    """An estimate above a window's limit, a bad dimension or amount, or a lease already
    counted raise a clear error and change nothing."""
    store = make_store(server)
    window = RateSpec(100, 60.0)
    with pytest.raises(CostTooLargeError, match="can never fit"):
        await take(store, "a", tokens(101, window))
    with pytest.raises(ValueError, match="identifier"):
        await take(store, "a", [("two words", window, 1)])
    with pytest.raises(ValueError, match="finite number"):
        await take(store, "a", tokens(float("nan"), window))
    with pytest.raises(ValueError, match="two estimates"):
        await take(store, "a", [("tokens", window, 1), ("tokens", KEEPER, 2)])
    assert await take(store, "a", tokens(10, window)) == 0
    with pytest.raises(ValueError, match="new lease name"):
        await take(store, "a", tokens(10, window))
    with pytest.raises(ValueError, match="finite number"):
        await store.settle("api", "a", {"tokens": -1})
    assert sums(plain) == {"tokens:60000000": 10}
    await store.aclose()


async def test_settling_is_safe_to_repeat_and_ignores_what_left(
    server: RedisServer, plain: redis.Redis
) -> None:
    """Settling twice changes nothing more; settling an unknown lease, or one whose start
    left every window, changes nothing; a dimension left out keeps its estimate."""
    store = make_store(server)
    window = RateSpec(100, 0.3)
    costs = [*tokens(50, window), ("images", window, 2)]
    assert await take(store, "a", costs) == 0
    await store.settle("api", "a", {"tokens": 20})
    await store.settle("api", "a", {"tokens": 20})
    assert sums(plain) == {"tokens:300000": 20, "images:300000": 2}
    await store.settle("api", "nobody", {"tokens": 1000})
    await store.settle("other", "a", {"tokens": 1000})
    assert sums(plain) == {"tokens:300000": 20, "images:300000": 2}
    assert not plain.exists("test:svc:other:costs:sums", "test:svc:other:costs:amounts")
    await anyio.sleep(0.3)
    await store.settle("api", "a", {"tokens": 1000})  # it left the window: no debt now
    assert await take(store, "b", costs) == 0
    assert sums(plain) == {"tokens:300000": 50, "images:300000": 2}
    await store.aclose()


async def test_a_window_declared_later_counts_what_is_recorded(
    server: RedisServer, plain: redis.Redis
) -> None:
    """A process that declares another window of a dimension sees what the others recorded
    in it; a window it does not declare is still kept up to date for the others."""
    one, two = make_store(server), make_store(server)
    minute, hour = RateSpec(100, 60.0), RateSpec(120, 3600.0)
    assert await take(one, "a", tokens(70, minute)) == 0
    assert await take(two, "b", tokens(40, minute, hour)) > 50  # 70 + 40 > 100
    assert await take(two, "b", tokens(30, minute, hour)) == 0
    assert await take(one, "c", tokens(0, minute)) == 0
    await one.settle("api", "c", {"tokens": 30})  # counted in the hour window as well
    assert sums(plain) == {"tokens:60000000": 130, "tokens:3600000000": 130}
    assert await take(two, "d", tokens(1, hour)) > 3000  # the hour holds 130 > 120 - 1
    await one.aclose()
    await two.aclose()


async def test_every_cost_key_expires(server: RedisServer, plain: redis.Redis) -> None:
    """The cost keys carry an expiry a little longer than the longest cost window."""
    store = make_store(server)
    costs = tokens(10, RateSpec(100, 1.0), RateSpec(1000, 2.0))
    assert await take(store, "a", costs) == 0
    await store.settle("api", "a", {"tokens": 5})
    keys = sorted(key.decode() for key in plain.scan_iter("test:svc:api:cost*"))
    assert keys == ["test:svc:api:costs", "test:svc:api:costs:amounts", "test:svc:api:costs:sums"]
    for key in keys:
        assert 2000 < plain.pttl(key) <= 3000, key
    await store.aclose()


async def test_a_restart_without_persistence_pauses_for_the_longest_cost_window(
    server: RedisServer,
) -> None:
    """Redis restarted empty lost the recorded amounts: the service starts nothing for the
    longest cost window (longer than the lease TTL here), and settling a lost start is a
    no-op."""
    from redis.exceptions import ConnectionError as Unreachable

    store = make_store(server, timeout=1.0)
    costs = tokens(10, RateSpec(100, 0.2), RateSpec(1000, 0.8))
    assert await take(store, "a", costs, ttl=0.3) == 0
    server.restart()
    with anyio.fail_after(10):
        while True:
            try:
                wait = await take(store, "b", costs, ttl=0.3)
                break
            except Unreachable:
                await anyio.sleep(0.05)
    assert 0.6 < wait <= 0.8
    await store.settle("api", "a", {"tokens": 1})  # gone with the state: nothing happens
    await anyio.sleep(wait)
    grant = await take(store, "b", costs, ttl=0.3, concurrent=1)
    assert isinstance(grant, Grant) and float(grant) == 0
    await store.aclose()


# ---------------------------------------------------------------------------- three processes


def _audit(records: list[Record]) -> tuple[dict[str, float], dict[str, tuple[float, float, float]]]:
    """The workers' grants (lease -> estimate) and settlements (lease -> sent, answered, actual)."""
    grants: dict[str, float] = {}
    settlements: dict[str, tuple[float, float, float]] = {}
    for record in records:
        if record.kind == "grant":
            _, lease, estimate = record.item.split("|")
            grants[lease] = float(estimate)
        elif record.kind == "settle":
            answered, lease, actual = record.item.split("|")
            settlements[lease] = (record.time, float(answered), float(actual))
    return grants, settlements


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["costs", "costs-debt", "cue-costs"])
def test_three_processes_share_one_token_budget(
    server: RedisServer, plain: redis.Redis, tmp_path: Path, mode: str
) -> None:
    """Three OS processes (asyncio, trio, asyncio) take 120 starts of one token budget through
    the store: every admission fits what the window held (with debts too), and with every
    actual at most its estimate no window of final amounts exceeds the limit. ``cue-costs``:
    the same through three cues (``shared=True`` with ``costs=``, estimates from ``cost=``,
    actuals from ``work.charge``): each start is settled once, to what its handler charged."""
    from redis_worker import COST_WINDOWS

    outputs = [tmp_path / f"worker-{index}.txt" for index in range(3)]
    workers = [
        Worker(server.url, "test", mode, 40, path, backend=backend)
        for path, backend in zip(outputs, ["asyncio", "trio", "asyncio"])
    ]
    try:
        for worker in workers:
            assert worker.wait(timeout=45) == 0, worker.stderr()
    finally:
        for worker in workers:
            worker.kill()
    records = read_records(outputs)
    assert sum(record.kind == "done" for record in records) == 3
    grants, settlements = _audit(records)
    assert len(grants) == len(settlements) == 120
    service = "llm" if mode == "cue-costs" else "tokens"
    amounts = plain.hgetall(f"test:svc:{service}:costs:amounts")
    starts = model(grants, settlements, start_times(plain, service), amounts)
    window = COST_WINDOWS[0]
    assert check_admissions(starts, window) > 0.8 * window.limit
    if mode != "costs-debt":
        check_final_windows(starts, window)
    else:
        assert any(start.actual is not None and start.actual > start.estimate for start in starts)
    spent = sum(start.actual or 0 for start in starts)
    times = sorted(start.at for start in starts)
    # ... and it is used, not wasted: at least half the limit's pace over the run.
    assert spent / (times[-1] - times[0]) >= 0.5 * window.limit / window.period
