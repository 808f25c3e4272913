"""Store outages longer than a lease: a holder that cannot renew gives its slot or claim up
(its handler cancelled, the attempt failed with LeaseLost) before anyone else can take it, and
every grant carries a fencing token that grows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import runcue
from redis_helpers import RedisServer, redis_server_running

pytestmark = pytest.mark.anyio  # (every test starts its server through require_redis())

OUTAGE = 1.6  # seconds: longer than the lease
TTL = 1.0


@pytest.fixture(params=["paused", "killed-with-aof"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A redis-server and how it goes away: frozen (SIGSTOP), or killed and restarted from
    its append-only file."""
    how = str(request.param)
    with redis_server_running(tmp_path, appendonly=how != "paused") as server:
        yield server, how


def make_store(server: RedisServer, **options: Any) -> runcue.RedisStore:
    options.setdefault("timeout", 0.5)
    return runcue.RedisStore(server.url, namespace="leases", **options)


def go_away(server: RedisServer, how: str) -> threading.Thread:
    """Take the server away for OUTAGE seconds, in a thread (the event loop goes on)."""

    def outage() -> None:
        if how == "paused":
            server.suspend()
            time.sleep(OUTAGE)
            server.resume()
        else:
            server.kill()
            time.sleep(OUTAGE)
            server.start()  # the same port; the AOF brings the leases and claims back

    thread = threading.Thread(target=outage)
    thread.start()
    return thread


async def join_thread(thread: threading.Thread) -> None:
    while thread.is_alive():
        await anyio.sleep(0.02)


class Intervals:
    """When each handler ran, on one clock, to find two that overlapped."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, float, float]] = []
        self.started: dict[str, float] = {}

    def start(self, name: str) -> None:
        self.started[name] = time.monotonic()

    def end(self, name: str) -> None:
        self.runs.append((name, self.started.pop(name), time.monotonic()))

    def overlaps(self) -> list[tuple[str, str]]:
        runs = [*self.runs, *((n, t, time.monotonic()) for n, t in self.started.items())]
        return [
            (a, b)
            for i, (a, a_from, a_to) in enumerate(runs)
            for b, b_from, b_to in runs[i + 1 :]
            if a_from < b_to and b_from < a_to
        ]


async def test_a_shared_slot_is_never_held_twice_through_an_outage(
    outage: tuple[RedisServer, str],
) -> None:
    """Two cues sharing concurrent=1 (lease_ttl=1): the store goes away for 1.6 s while one
    runs; its handler is cancelled (LeaseLost) before the other cue's handler starts."""
    server, how = outage
    seen = Intervals()
    cues = []
    for name in ("A", "B"):
        cue = runcue.Cue(store=make_store(server), lease_ttl=TTL, seed=1)
        cue.service("api", concurrent=1, shared=True)

        @cue.task("hold", uses="api")
        async def hold(work: runcue.WorkUnit, name: str = name) -> str:
            seen.start(name)
            try:
                await anyio.sleep(work.params["seconds"])
            finally:
                seen.end(name)
            return name

        cues.append(cue)
    first, second = cues
    with anyio.fail_after(30):
        async with first, second:
            a = await first.submit("hold", {"seconds": 30})
            while "A" not in seen.started:
                await anyio.sleep(0.01)
            work_a = await first.get(a)
            assert work_a is not None and isinstance(work_a.fencing_token, int)
            token_a = work_a.fencing_token
            b = await second.submit("hold", {"seconds": 0.1})
            thread = go_away(server, how)
            with pytest.raises(runcue.LeaseLost, match="lease lost"):
                await first.wait(a)
            assert await second.wait(b) == "B"
            await join_thread(thread)
            work_b = await second.get(b)
            assert work_b is not None and work_b.fencing_token is not None
            assert work_b.fencing_token > token_a
    assert seen.overlaps() == []
    assert [name for name, _, _ in seen.runs] == ["A", "B"]


async def test_keyed_work_never_runs_twice_at_once_through_an_outage(
    outage: tuple[RedisServer, str],
) -> None:
    """The same keyed work in two cues: the claim holder that cannot renew is cancelled before
    the other cue can claim the key; then whichever claims it runs it, once."""
    server, how = outage
    seen = Intervals()
    done: list[str] = []
    cues = []
    for name in ("A", "B"):
        cue = runcue.Cue(store=make_store(server), lease_ttl=TTL, seed=1)

        @cue.task("write", retry=2, backoff=0.01)
        async def write(work: runcue.WorkUnit, name: str = name) -> str:
            seen.start(name)
            try:
                if name == "A" and work.attempt == 1:
                    await anyio.sleep(30)
                await anyio.sleep(0.1)
            finally:
                seen.end(name)
            done.append(name)
            return name

        @cue.is_stale
        def is_stale(work: runcue.WorkUnit) -> bool:
            return not done

        cues.append(cue)
    first, second = cues
    with anyio.fail_after(40):
        async with first, second:
            a = await first.submit("write", {"n": 1}, key="invoice-1")
            while "A" not in seen.started:
                await anyio.sleep(0.01)
            b = await second.submit("write", {"n": 1}, key="invoice-1")
            thread = go_away(server, how)
            results = {await first.wait(a), await second.wait(b)}
            await join_thread(thread)
            work_a = await first.get(a)
            assert work_a is not None and work_a.attempt == 2  # retried after LeaseLost
    assert seen.overlaps() == []
    assert (
        len(done) == 1
    )  # run once, by whichever claimed it after the outage; skipped by the other
    assert results == {done[0], None}


async def test_fencing_tokens_grow_across_owners_and_a_restart(tmp_path: Path) -> None:
    """Leases and claims get ever larger tokens, also after a restart that lost the state."""
    with redis_server_running(tmp_path) as server:
        store = make_store(server, timeout=2.0)
        tokens = []
        for lease in ("a", "b"):
            grant = await store.acquire("api", windows=(), concurrent=2, lease=lease, ttl=5)
            assert grant == 0.0
            tokens.append(grant.fencing_token)  # type: ignore[attr-defined]
        assert tokens[0] < tokens[1]
        claim_tokens = [await store.claim("k", "A", 5)]
        assert claim_tokens[0] == await store.claim("k", "A", 5)  # the holder keeps its token
        await store.release_claim("k", "A")
        claim_tokens.append(await store.claim("k", "B", 5))
        assert 0 < claim_tokens[0] < claim_tokens[1]
        assert await store.acquire("api", windows=(), concurrent=None, lease="c", ttl=5) == 0.0
        server.restart()  # no persistence: the counters are gone
        with anyio.fail_after(10):
            while True:
                try:
                    grant = await store.acquire("api", windows=(), concurrent=2, lease="d", ttl=5)
                except Exception:
                    await anyio.sleep(0.05)
                    continue
                if grant == 0.0:
                    break
                await anyio.sleep(min(grant, 0.2))
        assert grant.fencing_token > tokens[1]  # type: ignore[attr-defined]
        await store.aclose()


async def test_a_lease_the_store_no_longer_has_is_lost_at_once(tmp_path: Path) -> None:
    """A renewal that finds the lease gone (deleted behind its back) cancels the handler."""
    import redis as redis_client

    with redis_server_running(tmp_path) as server:
        cue = runcue.Cue(store=make_store(server, timeout=2.0), lease_ttl=TTL, seed=1)
        cue.service("api", concurrent=1, shared=True)
        started = anyio.Event()

        @cue.task("hold", uses="api")
        async def hold(work: runcue.WorkUnit) -> None:
            started.set()
            await anyio.sleep(30)

        with anyio.fail_after(10):
            async with cue:
                work_id = await cue.submit("hold")
                await started.wait()
                with redis_client.Redis.from_url(server.url) as plain:
                    assert plain.delete("leases:svc:api:leases") == 1
                with pytest.raises(runcue.LeaseLost, match="expired"):
                    await cue.wait(work_id)
