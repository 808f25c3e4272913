"""``cue.limiter(name)``: the service's own CapacityLimiter, shared with code outside runcue."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]


class Census:
    """How many hold the service's budget at once: handlers and app code alike."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1


async def test_app_code_holding_the_limiter_counts_against_concurrent(
    make_cue: CueFactory,
) -> None:
    """With concurrent=2 and app code holding one token, at most one handler runs; handlers
    and app code together never exceed 2; when the app lets go, the rest runs."""
    cue = make_cue()
    cue.service("api", concurrent=2)
    census = Census()
    handlers_running = 0
    most_handlers = 0
    app_holds = anyio.Event()
    app_release = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        nonlocal handlers_running, most_handlers
        census.enter()
        handlers_running += 1
        most_handlers = max(most_handlers, handlers_running)
        await anyio.sleep(0.01)
        handlers_running -= 1
        census.leave()

    async def app() -> None:
        async with cue.limiter("api"):
            census.enter()
            app_holds.set()
            await app_release.wait()
            census.leave()

    with anyio.fail_after(10):
        async with cue, anyio.create_task_group() as tg:
            tg.start_soon(app)
            await app_holds.wait()
            ids = [await cue.submit("call", {"n": n}) for n in range(6)]
            await cue.wait(ids[2])  # three ran one at a time beside the app's token
            assert most_handlers == 1
            app_release.set()
            for work_id in ids:
                await cue.wait(work_id)
    assert census.most == 2
    assert most_handlers == 2  # once the app let go, both slots served the handlers
    assert cue.limiter("api").borrowed_tokens == 0


async def test_queued_work_starts_when_app_code_lets_go_of_a_full_service(
    make_cue: CueFactory,
) -> None:
    """App code holding every token: work waits as service_full (naming the borrowed
    tokens), then starts as soon as the app releases -- no handler end needed to wake it."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    ran = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        ran.set()

    limiter = cue.limiter("api")
    with anyio.fail_after(10):
        async with cue:
            await limiter.acquire()
            work_id = await cue.submit("call")
            while not cue.debug_blocked() or cue.debug_blocked()[0]["reason"] != "service_full":
                await anyio.sleep(0.005)
            assert "borrowed by other code" in cue.debug_blocked()[0]["details"]
            assert not ran.is_set()
            limiter.release()
            await cue.wait(work_id)
    assert ran.is_set()


async def test_app_code_waits_its_turn_while_handlers_hold_the_service(
    make_cue: CueFactory,
) -> None:
    """App code entering a full limiter waits until a handler ends, like any borrower."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    started = anyio.Event()
    release = anyio.Event()
    order: list[str] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        order.append("handler")
        started.set()
        await release.wait()
        order.append("handler done")

    async def app() -> None:
        async with cue.limiter("api"):
            order.append("app")

    with anyio.fail_after(10):
        async with cue, anyio.create_task_group() as tg:
            await cue.submit("call")
            await started.wait()
            tg.start_soon(app)
            await anyio.wait_all_tasks_blocked()
            assert order == ["handler"]
            release.set()
    assert order == ["handler", "handler done", "app"]


async def test_the_limiter_is_the_services_own_and_follows_reconfiguration() -> None:
    """cue.limiter(name) is one object per service, before and during the run; declaring the
    service again sets its total_tokens, live; an unknown service is refused by name."""
    cue = runcue.Cue()
    cue.service("api", concurrent=3)
    cue.service("free")
    before = cue.limiter("api")
    assert before.total_tokens == 3
    assert cue.limiter("free").total_tokens == float("inf")
    with pytest.raises(runcue.UnknownServiceError, match=r"^Unknown service 'nope'"):
        cue.limiter("nope")
    with anyio.fail_after(5):
        async with cue:
            assert cue.limiter("api") is before
            cue.service("api", concurrent=5)
            assert before.total_tokens == 5
    assert cue.stats().services["api"].concurrent == 5


async def test_a_rate_limited_service_does_not_spin_while_app_code_holds_tokens(
    make_cue: CueFactory,
) -> None:
    """App code holding a token and work waiting for a rate slot: the scheduler sleeps (no
    gate takes and gives back a token the rate still refuses, again and again)."""
    cue = make_cue()
    cue.service("api", concurrent=3, rate="1/10s")
    ticks = 0

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        pass

    engine = cue._engine
    tick = engine._tick

    async def counted() -> None:
        nonlocal ticks
        ticks += 1
        await tick()

    engine._tick = counted  # type: ignore[method-assign]
    limiter = cue.limiter("api")
    with anyio.fail_after(10):
        async with cue:
            await limiter.acquire()
            first = await cue.submit("call", {"n": 0})
            await cue.wait(first)
            for n in range(1, 4):
                await cue.submit("call", {"n": n})
            ticks = 0
            await anyio.sleep(0.3)
            assert ticks <= 3
            assert {b["reason"] for b in cue.debug_blocked()} == {"rate_limited"}
            limiter.release()
            await cue.stop(timeout=0)
