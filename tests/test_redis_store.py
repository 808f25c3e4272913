"""RedisStore against a real redis-server: the store alone, then cues in several OS processes.

The server is started per test on a free loopback port (``redis_helpers.RedisServer``); the
tests are skipped when ``redis-server`` is absent, and fail then if RUNCUE_REQUIRE_REDIS is set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from redis_helpers import (
    Record,
    RedisServer,
    Worker,
    poll_until,
    read_records,
    redis_server_running,
)
from runcue._rate import RateSpec
from runcue._store import Store

pytestmark = pytest.mark.anyio

try:
    import redis
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("RUNCUE_REQUIRE_REDIS"):
        raise
    pytest.skip(
        "Redis tests skipped: the redis client library is not installed"
        " (pip install 'runcue[redis]'); set RUNCUE_REQUIRE_REDIS=1 to make it fail",
        allow_module_level=True,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, stopped after the test."""
    with redis_server_running(tmp_path) as running:
        yield running


def make_store(server: RedisServer, namespace: str = "test", **options: Any) -> Any:
    from runcue._redis import RedisStore

    return RedisStore(server.url, namespace=namespace, **options)


@pytest.fixture
def redis_client(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test server, to look at the keys the store wrote."""
    with redis.Redis.from_url(server.url) as plain:
        yield plain


@pytest.fixture
def spawn(server: RedisServer) -> Iterator[Callable[..., Worker]]:
    """Start worker processes; any still running when the test ends is killed."""
    started: list[Worker] = []

    def start(*args: Any, **options: Any) -> Worker:
        worker = Worker(server.url, *args, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


# ---------------------------------------------------------------------------- the store alone


async def test_store_implements_the_protocol(server: RedisServer) -> None:
    """RedisStore is a runcue Store and validates its options."""
    store = make_store(server)
    assert isinstance(store, Store)
    assert "test" in repr(store)
    with pytest.raises(ValueError, match="namespace"):
        make_store(server, namespace="")
    with pytest.raises(ValueError, match="poll_interval"):
        make_store(server, poll_interval=0)
    await store.aclose()


async def test_windows_are_exact_under_concurrent_acquirers(
    server: RedisServer, redis_client: redis.Redis
) -> None:
    """Three stores (as three processes) with four acquirers each never put more than five
    starts in any 0.2 s window, on the server's own timestamps."""
    stores = [make_store(server) for _ in range(3)]
    windows = (RateSpec(5, 0.2), RateSpec(100_000, 60.0))  # the 60 s window keeps every start
    granted = 0

    async def acquirer(store: Any, name: str) -> None:
        nonlocal granted
        serial = 0
        while granted < 20:
            serial += 1
            wait = await store.acquire(
                "api", windows=windows, concurrent=None, lease=f"{name}-{serial}", ttl=5
            )
            if wait == 0:
                granted += 1
            else:
                assert 0 < wait <= 0.2
                await anyio.sleep(wait)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for index, store in enumerate(stores):
                for task in range(4):
                    tg.start_soon(acquirer, store, f"s{index}t{task}")
    recorded = redis_client.zrange("test:svc:api:rate:60000000", 0, -1, withscores=True)
    starts = sorted(int(entry[1]) for entry in recorded)
    assert len(starts) == granted >= 20
    # At most 5 in any half-open window [t, t + 0.2 s): the 6th start is >= 0.2 s after the 1st.
    assert min(later - first for first, later in zip(starts, starts[5:])) >= 200_000
    for store in stores:
        await store.aclose()


async def test_windows_admit_together_or_not_at_all(
    server: RedisServer, redis_client: redis.Redis
) -> None:
    """A start refused by one window is not recorded in the others."""
    store = make_store(server)
    windows = (RateSpec(3, 60.0), RateSpec(2, 0.3))
    for lease in ("l0", "l1"):
        assert await store.acquire("api", windows=windows, concurrent=None, lease=lease, ttl=5) == 0
    wait = await store.acquire("api", windows=windows, concurrent=None, lease="l2", ttl=5)
    assert 0 < wait <= 0.3  # the short window is full
    assert redis_client.zcard("test:svc:api:rate:60000000") == 2  # the long one did not count it
    await anyio.sleep(wait)
    assert await store.acquire("api", windows=windows, concurrent=None, lease="l3", ttl=5) == 0
    wait = await store.acquire("api", windows=windows, concurrent=None, lease="l4", ttl=5)
    assert 50 < wait <= 60  # now the long window is full, the short one has room
    assert redis_client.zcard("test:svc:api:rate:300000") == 1  # the refused start left no trace
    await store.aclose()


async def test_leases_cap_concurrency_across_stores(server: RedisServer) -> None:
    """``concurrent`` counts the leases of every store; a refusal asks again within the poll
    interval, and a released lease frees its slot at once."""
    one, two = make_store(server), make_store(server, poll_interval=0.05)
    assert await one.acquire("api", windows=(), concurrent=2, lease="a", ttl=10) == 0
    assert await two.acquire("api", windows=(), concurrent=2, lease="b", ttl=10) == 0
    wait = await two.acquire("api", windows=(), concurrent=2, lease="c", ttl=10)
    assert 0 < wait <= 0.05
    await one.release("api", "a")
    assert await two.acquire("api", windows=(), concurrent=2, lease="c", ttl=10) == 0
    await one.aclose()
    await two.aclose()


async def test_an_expired_lease_frees_its_slot(server: RedisServer) -> None:
    """A lease nobody renews (its holder died) frees its slot once its TTL passed, not before."""
    holder, other = make_store(server), make_store(server)
    ttl = 0.3
    asked = time.monotonic()
    assert await holder.acquire("api", windows=(), concurrent=1, lease="dead", ttl=ttl) == 0
    with anyio.fail_after(5):
        while (wait := await other.acquire("api", windows=(), concurrent=1, lease="b", ttl=5)) > 0:
            await anyio.sleep(wait)
    assert time.monotonic() - asked >= ttl
    await holder.aclose()
    await other.aclose()


async def test_renew_keeps_a_lease_and_never_revives_an_expired_one(server: RedisServer) -> None:
    """Renewal keeps a live lease past its TTL; renewing an expired lease does not take back
    the slot somebody else holds now."""
    one, two = make_store(server), make_store(server)
    # TTL 0.6 s, renewed every 0.1 s: only a stall of half a second (a loaded CI machine)
    # could let it lapse between two renewals.
    assert await one.acquire("api", windows=(), concurrent=1, lease="a", ttl=0.6) == 0
    renewed_until = time.monotonic() + 1.3
    while time.monotonic() < renewed_until:  # over two TTLs
        await one.renew("api", ["a"], 0.6)
        assert await two.acquire("api", windows=(), concurrent=1, lease="b", ttl=0.6) > 0
        await anyio.sleep(0.1)
    with anyio.fail_after(5):  # stop renewing: "a" expires and "b" gets the slot
        while await two.acquire("api", windows=(), concurrent=1, lease="b", ttl=5) > 0:
            await anyio.sleep(0.02)
    await one.renew("api", ["a"], 5)  # too late: "a" stays expired
    assert await one.acquire("api", windows=(), concurrent=1, lease="c", ttl=5) > 0
    await two.release("api", "b")
    assert await one.acquire("api", windows=(), concurrent=1, lease="c", ttl=5) == 0
    await one.aclose()
    await two.aclose()


async def test_pause_blocks_every_store_and_never_shortens(server: RedisServer) -> None:
    """A pause from one store refuses every store's starts until it ends; a shorter pause
    does not cut it short."""
    one, two = make_store(server), make_store(server)
    await one.pause("api", 0.5)
    await two.pause("api", 0.1)
    for store in (one, two):
        wait = await store.acquire(
            "api", windows=(RateSpec(10, 1.0),), concurrent=None, lease="x", ttl=5
        )
        assert 0.3 < wait <= 0.5
    await anyio.sleep(wait)
    assert await two.acquire("api", windows=(), concurrent=None, lease="y", ttl=5) == 0
    assert await two.acquire("other", windows=(), concurrent=None, lease="z", ttl=5) == 0
    await one.aclose()
    await two.aclose()


async def test_claims_belong_to_their_owner(server: RedisServer) -> None:
    """A claim is held by one owner: others are refused, only the owner renews or releases it."""
    store = make_store(server)
    assert await store.claim("job:1", "A", 0.4)
    assert await store.claim("job:1", "A", 0.4)  # the holder asking again still holds it
    assert not await store.claim("job:1", "B", 0.4)
    await store.renew_claims(["job:1"], "B", 60)  # not B's: no effect
    await store.release_claim("job:1", "B")  # not B's: no effect
    assert not await store.claim("job:1", "B", 0.4)
    renewed_until = time.monotonic() + 0.7
    while time.monotonic() < renewed_until:  # the owner's renewals keep it past its TTL
        await store.renew_claims(["job:1"], "A", 0.4)
        assert not await store.claim("job:1", "B", 0.4)
        await anyio.sleep(0.1)
    await store.release_claim("job:1", "A")
    assert await store.claim("job:1", "B", 5)
    await store.aclose()


async def test_a_claim_whose_holder_died_is_taken_over(server: RedisServer) -> None:
    """A claim nobody renews expires after its TTL and another owner takes it over."""
    store = make_store(server)
    asked = time.monotonic()
    assert await store.claim("job:2", "dead", 0.3)
    with anyio.fail_after(5):
        while not await store.claim("job:2", "B", 5):
            await anyio.sleep(0.02)
    assert time.monotonic() - asked >= 0.3
    await store.renew_claims(["job:2"], "dead", 5)  # the old holder cannot take it back
    assert not await store.claim("job:2", "dead", 5)
    await store.aclose()


async def test_every_key_expires(server: RedisServer, redis_client: redis.Redis) -> None:
    """Nothing the store writes lives forever: every key carries an expiry."""
    store = make_store(server)
    costs = [("tokens", RateSpec(100, 2.0), 10.0)]
    await store.acquire(
        "api", windows=(RateSpec(5, 1.0),), concurrent=3, lease="a", ttl=5, costs=costs
    )
    await store.settle("api", "a", {"tokens": 5})
    await store.renew("api", ["a"], 5)
    await store.pause("api", 0.5)
    await store.claim("job", "A", 5)
    await store.renew_claims(["job"], "A", 5)
    keys = sorted(key.decode() for key in redis_client.scan_iter("test:*"))
    assert keys == [
        "test:claim:job",
        "test:claims:epoch",
        "test:claims:fence",
        "test:svc:api:costs",
        "test:svc:api:costs:amounts",
        "test:svc:api:costs:sums",
        "test:svc:api:epoch",
        "test:svc:api:fence",
        "test:svc:api:leases",
        "test:svc:api:pause",
        "test:svc:api:rate:1000000",
    ]
    for key in keys:
        assert 0 < redis_client.pttl(key) <= 66_000, key
    await store.aclose()


async def test_methods_raise_while_the_server_is_down(server: RedisServer) -> None:
    """With the server stopped every method raises (the cue then fails closed); once it is
    back the store answers again and, having lost its state, keeps the service paused until
    leases could be re-registered."""
    store = make_store(server, timeout=1.0)
    assert await store.acquire("api", windows=(), concurrent=2, lease="a", ttl=0.5) == 0
    server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        partial(store.acquire, "api", windows=(), concurrent=2, lease="b", ttl=0.5),
        partial(store.renew, "api", ["a"], 0.5),
        partial(store.release, "api", "a"),
        partial(store.pause, "api", 1.0),
        partial(store.claim, "job", "A", 1.0),
        partial(store.renew_claims, ["job"], "A", 1.0),
        partial(store.release_claim, "job", "A"),
    ]
    with anyio.fail_after(30):
        for call in calls:
            with pytest.raises(redis.exceptions.ConnectionError):
                await call()
    server.start()
    wait = await store.acquire("api", windows=(), concurrent=2, lease="b", ttl=0.5)
    assert 0.3 < wait <= 0.5  # the state was lost: paused for one lease TTL
    await store.aclose()


async def test_a_restart_keeps_live_leases(server: RedisServer) -> None:
    """After Redis restarts empty, a holder's renewal re-creates its lease and the service
    stays paused meanwhile, so the limit holds across the restart."""
    holder, other = make_store(server), make_store(server)
    assert await holder.acquire("api", windows=(), concurrent=1, lease="a", ttl=0.5) == 0
    assert await other.acquire("api", windows=(), concurrent=1, lease="b", ttl=0.5) > 0
    server.restart()
    await holder.renew("api", ["a"], 0.5)  # notices the loss: re-creates "a", pauses "api"
    assert await other.acquire("api", windows=(), concurrent=1, lease="b", ttl=0.5) > 0
    stop_at = time.monotonic() + 0.8
    while time.monotonic() < stop_at:  # past the pause, "a" still holds the only slot
        await holder.renew("api", ["a"], 0.5)
        assert await other.acquire("api", windows=(), concurrent=1, lease="b", ttl=0.5) > 0
        await anyio.sleep(0.1)
    await holder.release("api", "a")
    assert await other.acquire("api", windows=(), concurrent=1, lease="b", ttl=0.5) == 0
    await holder.aclose()
    await other.aclose()


async def test_a_restart_seen_first_by_another_call_still_lets_the_holder_renew(
    server: RedisServer,
) -> None:
    """After a restart, the holder's own next acquire (or claim) is the call that notices the
    loss and learns the new epoch; its renewal right after still re-creates the lease (and
    the claim) it held, instead of finding it gone."""
    holder, other = make_store(server), make_store(server)
    assert await holder.acquire("api", windows=(), concurrent=2, lease="a", ttl=1.0) == 0
    assert await holder.claim("job:live", "A", 1.0)
    server.restart()
    assert await holder.acquire("api", windows=(), concurrent=2, lease="b", ttl=1.0) > 0
    assert not await holder.claim("job:other", "A", 1.0)  # claims paused: the loss is seen
    assert await holder.renew("api", ["a"], 1.0) == []  # re-created, not "expired"
    assert await holder.renew_claims(["job:live"], "A", 1.0) == []
    assert not await other.claim("job:live", "B", 1.0)
    assert await other.acquire("api", windows=(), concurrent=1, lease="c", ttl=1.0) > 0
    await holder.aclose()
    await other.aclose()


async def test_a_restart_keeps_live_claims(server: RedisServer) -> None:
    """After Redis restarts empty, nobody can take a claim before its holder re-creates it
    at its next renewal; a claim whose holder never renews is free once a TTL has passed."""
    holder, other = make_store(server), make_store(server)
    assert await holder.claim("job:live", "A", 0.5)
    assert await holder.claim("job:dead", "A", 0.5)
    assert not await other.claim("job:live", "B", 0.5)
    server.restart()
    assert not await other.claim("job:live", "B", 0.5)  # notices the loss: claims paused
    with anyio.fail_after(5):
        while True:
            await holder.renew_claims(["job:live"], "A", 0.5)  # re-created while paused
            if await other.claim("job:dead", "B", 5):  # nobody renewed this one
                break
            assert not await other.claim("job:live", "B", 0.5)
            await anyio.sleep(0.05)
    assert not await other.claim("job:live", "B", 0.5)
    await holder.aclose()
    await other.aclose()


async def test_closed_store_refuses_calls(server: RedisServer) -> None:
    """After aclose() the store raises instead of reconnecting."""
    store = make_store(server)
    await store.aclose()
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.claim("job", "A", 1.0)


def test_runcue_imports_without_redis() -> None:
    """runcue and runcue._redis import without the redis package; RedisStore() then says how
    to install it."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import runcue, runcue._redis\n"
        "try:\n"
        "    runcue._redis.RedisStore()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'runcue[redis]'" in result.stdout


# ---------------------------------------------------------------------------- many processes


def _split(record: Record) -> tuple[str, str]:
    item, _, rest = record.item.partition("|")
    return item, rest


def _max_overlap(records: list[Record]) -> int:
    """The most handlers running at once; at equal times an end comes before a start."""
    events = sorted(
        (record.time, 0 if record.kind == "end" else 1)
        for record in records
        if record.kind in ("start", "end")
    )
    running = most = 0
    for _, is_start in events:
        running += 1 if is_start else -1
        most = max(most, running)
    return most


def _check_shared_limits(records: list[Record], limit: int, period: float, concurrent: int) -> None:
    """The run kept ``limit``/``period`` and ``concurrent`` across every process.

    Exact on the store's grants: each is known to lie in [asked, answered] on the host clock,
    which the server shares, so a window [t, t + period) that holds more than ``limit`` whole
    such intervals would prove more than ``limit`` admissions in it. The handlers' own start
    times lag their grant by the dispatch delay D (measured here): no window of length
    ``period - D`` may hold more than ``limit`` of them. Running handlers are counted exactly:
    a handler runs strictly inside its lease.
    """
    grants = sorted(
        (record.time, float(_split(record)[0]), _split(record)[1])
        for record in records
        if record.kind == "grant"
    )
    starts = [record for record in records if record.kind == "start"]
    assert len(grants) == len(starts)
    for index, (asked, _, _) in enumerate(grants):
        inside = [answered for later, answered, _ in grants[index:] if answered < asked + period]
        assert len(inside) <= limit, f"{len(inside)} grants inside [{asked}, {asked + period})"
    asked_by_work = {lease.split(":")[-3]: asked for asked, _, lease in grants}
    delay = max(record.time - asked_by_work[_split(record)[1]] for record in starts)
    assert delay < 0.25, f"a handler started {delay:.3f}s after its grant was asked for"
    times = sorted(record.time for record in starts)
    tightest = min((later - first for first, later in zip(times, times[limit:])), default=period)
    assert tightest >= period - delay, (tightest, delay)
    assert _max_overlap(records) <= concurrent


def _outputs(tmp_path: Path, count: int) -> list[Path]:
    return [tmp_path / f"worker-{index}.txt" for index in range(count)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_processes_share_rate_and_concurrency(
    spawn: Callable[..., Worker], tmp_path: Path
) -> None:
    """Three OS processes (asyncio, trio, asyncio) sharing ``20/sec`` and ``concurrent=4``
    through Redis never exceed either limit together over 240 items, and keep near the rate."""
    each = 80
    total = 3 * each
    outputs = _outputs(tmp_path, 3)
    workers = [
        spawn("mp-a", "limits", each, path, backend=backend, ttl=2.0)
        for path, backend in zip(outputs, ["asyncio", "trio", "asyncio"])
    ]
    for worker in workers:
        assert worker.wait(timeout=100) == 0, worker.stderr()
    records = read_records(outputs)
    starts = [record for record in records if record.kind == "start"]
    ends = [record for record in records if record.kind == "end"]
    assert len(starts) == len(ends) == total
    assert len({(record.pid, _split(record)[0]) for record in starts}) == total
    assert not [record for record in records if record.kind == "failed"]
    _check_shared_limits(records, limit=20, period=1.0, concurrent=4)
    times = sorted(record.time for record in starts)
    assert (times[-1] - times[0]) >= (total - 20) / 20  # the rate bounds the whole run
    assert (times[-1] - times[0]) <= total / 20 * 1.25  # ... and it is used, not wasted


@pytest.mark.timeout(60)
def test_killed_lease_holder_frees_its_slots_within_the_ttl(
    spawn: Callable[..., Worker], tmp_path: Path
) -> None:
    """``kill -9`` of a process holding every slot: another process starts nothing before the
    kill and everything within the lease TTL after it."""
    ttl = 1.5
    holder_out, waiter_out = _outputs(tmp_path, 2)
    holder = spawn("mp-b", "hold", 4, holder_out, backend="trio", ttl=ttl)
    poll_until(lambda: holder.count("start") == 4, timeout=20, what="the holder's 4 starts")
    waiter = spawn("mp-b", "limits", 4, waiter_out, backend="asyncio", ttl=ttl)
    poll_until(lambda: waiter.count("ready") == 1, timeout=20, what="the waiter's submissions")
    killed_at = time.time()
    os.kill(holder.process.pid, signal.SIGKILL)
    assert waiter.wait(timeout=30) == 0, waiter.stderr()
    assert holder.process.wait(timeout=10) == -signal.SIGKILL
    starts = sorted(record.time for record in waiter.records() if record.kind == "start")
    assert len(starts) == 4
    assert starts[0] > killed_at  # the dead process's leases held the slots until it died
    assert starts[-1] <= killed_at + ttl + 0.5  # and were free within the TTL (+ poll/dispatch)


@pytest.mark.timeout(90)
def test_redis_restart_mid_run_loses_nothing(
    server: RedisServer, spawn: Callable[..., Worker], tmp_path: Path
) -> None:
    """Redis restarts (empty) while three processes run: every item still runs exactly once,
    nothing starts until the lost history could no longer matter (1 s: the window and the
    lease TTL), the limits hold across the restart, and the run completes."""
    outputs = _outputs(tmp_path, 3)
    workers = [
        spawn("mp-c", "limits", 40, path, backend=backend, ttl=1.0)
        for path, backend in zip(outputs, ["trio", "asyncio", "trio"])
    ]

    def far_enough() -> bool:
        counts = [worker.count("start") for worker in workers]
        return min(counts) >= 3 and sum(counts) >= 30

    poll_until(far_enough, timeout=30, what="30 starts, 3 per process")
    server.stop()
    down_at = time.time()  # no server: nothing can be granted from here until it is back
    server.start()
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr()
    records = read_records(outputs)
    starts = [record for record in records if record.kind == "start"]
    assert len(starts) == len([record for record in records if record.kind == "end"]) == 120
    assert len({(record.pid, _split(record)[0]) for record in starts}) == 120
    assert not [record for record in records if record.kind == "failed"]
    after = [float(_split(r)[0]) for r in records if r.kind == "grant" and r.time > down_at]
    assert after, "nothing was granted after the restart"
    assert min(after) >= down_at + 1.0  # the empty server paused the service first
    _check_shared_limits(records, limit=20, period=1.0, concurrent=4)


@pytest.mark.timeout(60)
def test_keyed_work_submitted_by_three_processes_runs_once(
    spawn: Callable[..., Worker], tmp_path: Path
) -> None:
    """The same five keyed items submitted by three processes run once each; the others wait
    for the claim and then see the output through is_stale."""
    outputs = _outputs(tmp_path, 3)
    workers = [
        spawn("mp-d", "keyed", 5, path, backend=backend, ttl=2.0)
        for path, backend in zip(outputs, ["asyncio", "trio", "asyncio"])
    ]
    for worker in workers:
        assert worker.wait(timeout=45) == 0, worker.stderr()
    records = read_records(outputs)
    assert sorted(_split(record)[0] for record in records if record.kind == "start") == [
        str(index) for index in range(5)
    ]
    for index in range(5):
        assert len((tmp_path / f"proof-{index}").read_text().split()) == 1
