"""Limits the way APIs count, through a cue: cost windows settled on actual use, the server's
own numbers, adaptive concurrency, fair shares per tenant, and quotas that fail fast.

Behaviour is tested on both backends; the exactness of long windows on trio's virtual clock
(``MockClock(autojump_threshold=0)``: a minute passes in no time)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio
from trio.testing import MockClock

import runcue

CueFactory = Callable[..., runcue.Cue]


def on_virtual_clock(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main`` under trio with a clock that jumps to the next timer at once."""
    return trio.run(main, clock=MockClock(autojump_threshold=0))


def most_in_any_window(events: list[tuple[float, float]], period: float) -> float:
    """The largest sum of amounts whose times fall in one window ``(t - period, t]``."""
    events = sorted(events)
    most = 0.0
    for index, (end, _) in enumerate(events):
        total = 0.0
        for when, amount in events[: index + 1]:
            if when + period > end:  # (as the windows compute it: a start leaves at + period)
                total += amount
        most = max(most, total)
    return most


# ---------------------------------------------------------------------------- costs


def test_token_windows_hold_on_actual_use_and_refunds_are_used_at_once() -> None:
    """10,000 tokens/min with random estimates and smaller actuals: no minute ever holds
    more than 10,000 actual tokens, and the run uses the refunds (close to the budget)."""
    rng = random.Random(7)
    starts: list[tuple[float, float]] = []

    async def main() -> float:
        cue = runcue.Cue(seed=1)
        cue.service("llm", rate="500/min", costs={"tokens": "10000/min"}, concurrent=20)

        @cue.task("ask", uses="llm", cost=lambda work: {"tokens": work.params["estimate"]})
        async def ask(work: runcue.WorkUnit) -> None:
            starts.append((anyio.current_time(), work.params["actual"]))
            await anyio.sleep(2)
            work.charge(tokens=work.params["actual"])

        async with cue:
            began = anyio.current_time()
            for index in range(300):
                estimate = rng.randint(100, 1000)
                actual = rng.randint(estimate // 4, estimate)
                await cue.submit("ask", {"i": index, "estimate": estimate, "actual": actual})
            await cue.join()
            took = anyio.current_time() - began
        return took

    elapsed = on_virtual_clock(main)
    assert most_in_any_window(starts, 60.0) <= 10_000
    spent = sum(amount for _, amount in starts)
    # Settled on the actual cost, the budget is used: about 10,000 tokens a minute.
    assert spent / (elapsed / 60) >= 0.9 * 10_000


def test_a_charge_above_the_estimate_is_debt_that_delays_the_next_works() -> None:
    """Estimated 1,000 but charged 3,000 of 4,000/min: the next 1,000-token work waits until
    that debt leaves the window."""
    starts: list[float] = []

    async def main() -> None:
        cue = runcue.Cue(seed=1)
        cue.service("llm", costs={"tokens": "4000/min"})

        @cue.task("ask", uses="llm", cost={"tokens": 1000})
        async def ask(work: runcue.WorkUnit) -> None:
            starts.append(anyio.current_time())
            if work.params["n"] == 0:
                work.charge(tokens=3000)

        async with cue:
            first = await cue.submit("ask", {"n": 0})
            await cue.wait(first)
            for n in range(1, 3):
                await cue.submit("ask", {"n": n})

    on_virtual_clock(main)
    assert starts[1] - starts[0] < 1.0  # 3,000 + 1,000 fit in 4,000
    assert starts[2] - starts[0] >= 60.0  # the debt had to leave the window first


def test_a_window_in_debt_says_when_it_admits_again() -> None:
    """A cost window charged beyond its limit reports its use and, as ready_in, the seconds
    until its oldest amounts leave it (it reported 0.0: "admits now")."""

    async def main() -> list[runcue.LimitState]:
        cue = runcue.Cue(seed=1)
        cue.service("llm", costs={"tokens": "100/10s"})

        @cue.task("ask", uses="llm", cost={"tokens": 10})
        async def ask(work: runcue.WorkUnit) -> None:
            work.charge(tokens=300)

        async with cue:
            await cue.wait(await cue.submit("ask"))
            await anyio.sleep(1)
            states = [s for s in cue.stats().services["llm"].limits if s.kind == "cost"]
        return states

    (state,) = on_virtual_clock(main)
    assert state.used == 300
    assert state.ready_in == pytest.approx(9.0)
    assert state.left == 0


@pytest.mark.anyio
async def test_actual_cost_from_the_result_refunds_the_rest(make_cue: CueFactory) -> None:
    """actual_cost=(work, result) settles the window on what the result says was used."""
    cue = make_cue()
    cue.service("llm", costs={"tokens": "1000/hour"})

    @cue.task(
        "ask",
        uses="llm",
        cost={"tokens": 600},
        actual_cost=lambda work, result: {"tokens": result["usage"]},
    )
    async def ask(work: runcue.WorkUnit) -> dict[str, int]:
        return {"usage": 100}

    with anyio.fail_after(5):
        async with cue:
            for n in range(3):  # 3 x 600 would need 1,800; 3 x 100 fit at once
                await cue.wait(await cue.submit("ask", {"n": n}))
            (limit,) = [s for s in cue.stats().services["llm"].limits if s.kind == "cost"]
            assert limit.used == 300
            assert limit.name == "tokens 1000/3600s"


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["charge", "actual_cost"])
async def test_a_charge_in_an_undeclared_dimension_is_ignored_and_the_cue_goes_on(
    make_cue: CueFactory, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A charge in a dimension the service does not declare is dropped with a warning that
    names it; the declared part settles, the work completes, and the cue keeps running
    (it used to end the cue and leave a slot borrowed)."""
    cue = make_cue()
    cue.service("llm", concurrent=2, costs={"tokens": "1000/hour"})
    actual = (lambda work, result: {"tokens": 30, "bytes": 5}) if how == "actual_cost" else None

    @cue.task("ask", uses="llm", cost={"tokens": 600}, actual_cost=actual)
    async def ask(work: runcue.WorkUnit) -> str:
        if how == "charge":
            work.charge(tokens=30, bytes=5)
        return "answered"

    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("ask", {"n": 1})) == "answered"
            assert await cue.wait(await cue.submit("ask", {"n": 2})) == "answered"
            (limit,) = [s for s in cue.stats().services["llm"].limits if s.kind == "cost"]
            assert limit.used == 60
    assert cue.stats().completed == 2
    assert cue.limiter("llm").borrowed_tokens == 0
    assert "charged 'bytes', which service 'llm' does not declare" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["running", "before the start"])
async def test_waiting_work_that_a_lowered_window_can_never_admit_fails_at_once(
    make_cue: CueFactory, when: str
) -> None:
    """A service declared again with a window below a waiting work's estimate: that work
    fails with CostTooLargeError (it waited forever, "waiting for tokens"); work whose
    estimate still fits runs."""
    cue = make_cue()
    cue.service("s", concurrent=1, costs={"tokens": "100/1s"})
    gate = anyio.Event()

    @cue.task("t", uses="s", cost=lambda work: {"tokens": work.params["tokens"]})
    async def t(work: runcue.WorkUnit) -> int:
        if work.params.get("hold"):
            await gate.wait()
        return int(work.params["tokens"])

    lower = {"concurrent": 1, "costs": {"tokens": "50/1s"}}
    with anyio.fail_after(10):
        if when == "before the start":
            big = await cue.submit("t", {"tokens": 80})
            small = await cue.submit("t", {"tokens": 40})
            cue.service("s", **lower)  # type: ignore[arg-type]
            async with cue:
                with pytest.raises(runcue.CostTooLargeError, match="80 tokens can never start"):
                    await cue.wait(big)
                assert await cue.wait(small) == 40
        else:
            async with cue:
                holder = await cue.submit("t", {"tokens": 10, "hold": True})
                big = await cue.submit("t", {"tokens": 80})
                small = await cue.submit("t", {"tokens": 40})
                cue.service("s", **lower)  # type: ignore[arg-type]
                with pytest.raises(runcue.CostTooLargeError, match="80 tokens can never start"):
                    await cue.wait(big)
                gate.set()
                assert await cue.wait(holder) == 10
                assert await cue.wait(small) == 40
    stats = cue.stats()
    assert (stats.failed, stats.pending, stats.running) == (1, 0, 0)


@pytest.mark.anyio
async def test_a_cost_larger_than_a_whole_window_fails_at_submit(make_cue: CueFactory) -> None:
    """An estimate above a window's whole limit can never start: submit() says so, and a
    constant one is refused when the task is declared."""
    cue = make_cue()
    cue.service("llm", costs={"tokens": "1000/min;5000/day"})

    @cue.task("ask", uses="llm", cost=lambda work: {"tokens": work.params["tokens"]})
    async def ask(work: runcue.WorkUnit) -> None:
        pass

    with pytest.raises(runcue.CostTooLargeError, match="1000/60s") as info:
        cue.task("huge", uses="llm", cost={"tokens": 2000})(ask)
    assert isinstance(info.value, ValueError)
    with anyio.fail_after(5):
        async with cue:
            with pytest.raises(runcue.CostTooLargeError, match="lower the estimate"):
                await cue.submit("ask", {"tokens": 1500})
            await cue.wait(await cue.submit("ask", {"tokens": 500}))
    assert cue.stats().submitted == 1


def test_cost_declarations_are_checked_where_they_are_made() -> None:
    """Bad costs= and cost= are refused naming the value and the fix."""
    cue = runcue.Cue()
    with pytest.raises(ValueError, match="tokens"):
        cue.service("llm", costs={"tokens": "lots"})
    cue.service("plain")
    with pytest.raises(ValueError, match=r"costs=\{'tokens'"):
        cue.task("t", uses="plain", cost={"tokens": 1})
    cue.service("llm", costs={"tokens": "100/min"})
    with pytest.raises(ValueError, match="'bytes' is not declared"):
        cue.task("t", uses="llm", cost={"bytes": 1})
    with pytest.raises(TypeError, match="cost must be a mapping"):
        cue.task("t", uses="llm", cost=5)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_waiting_for_tokens_is_shown_and_explained(make_cue: CueFactory) -> None:
    """A work held back by a spent token window reads 'cost_limited ... waiting for tokens'."""
    cue = make_cue()
    cue.service("llm", costs={"tokens": "1000/hour"})

    @cue.task("ask", uses="llm", cost={"tokens": 800})
    async def ask(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(5):
        async with cue:
            await cue.wait(await cue.submit("ask", {"n": 1}))
            waiting = await cue.submit("ask", {"n": 2})
            while not cue.debug_blocked() or cue.debug_blocked()[0]["reason"] == "queued":
                await anyio.sleep(0.005)
            (blocked,) = cue.debug_blocked()
            assert blocked["reason"] == "cost_limited"
            assert "waiting for tokens" in blocked["details"]
            assert "waiting for tokens" in cue.explain(waiting)
            await cue.stop(timeout=0)


# ---------------------------------------------------------------------------- server numbers


@pytest.mark.anyio
async def test_the_servers_numbers_tighten_the_service(make_cue: CueFactory) -> None:
    """A response saying 0 requests are left for 0.3 s holds the next start until then;
    a retry-after pauses the service; numbers looser than the declared windows change
    nothing."""
    cue = make_cue()
    cue.service("api", rate="100/min")
    starts: list[float] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())
        mode = work.params["mode"]
        if mode == "spent":
            work.observe(
                {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}
            )
        elif mode == "loose":
            work.observe(
                {"x-ratelimit-remaining-requests": "5000", "x-ratelimit-reset-requests": "1m"}
            )
        elif mode == "retry":
            work.observe({"retry-after-ms": "300"})

    with anyio.fail_after(10):
        async with cue:
            for mode in ("loose", "next", "spent", "after", "retry", "paused"):
                await cue.wait(await cue.submit("call", {"mode": mode}))
    assert starts[1] - starts[0] < 0.2  # the loose numbers held nothing back
    assert starts[3] - starts[2] >= 0.28  # 0 left until the reset
    assert starts[5] - starts[4] >= 0.28  # retry-after paused the service


@pytest.mark.anyio
async def test_malformed_headers_are_ignored(make_cue: CueFactory) -> None:
    """work.observe() never fails on what a server sends; a wrong type is logged, not raised."""
    cue = make_cue()
    cue.service("api")

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> str:
        work.observe({"x-ratelimit-remaining-requests": "lots", "retry-after": "soon"})
        work.observe(42)
        return "ok"

    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("call")) == "ok"


@pytest.mark.anyio
async def test_adaptive_concurrency_halves_on_rate_limited_and_grows_back(
    make_cue: CueFactory,
) -> None:
    """adaptive=True: a RateLimited halves how many run at once (never above concurrent);
    successes grow it back; stats() shows it."""
    cue = make_cue()
    cue.service("api", concurrent=8, adaptive=True)
    running = 0
    most_after: list[int] = []
    limited = False

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        nonlocal running, limited
        running += 1
        if limited:
            most_after.append(running)
        await anyio.sleep(0.01)
        running -= 1
        if work.params["n"] == 0 and not limited:
            limited = True
            raise runcue.RateLimited(retry_after=0.01)

    with anyio.fail_after(10):
        async with cue:
            for n in range(40):
                await cue.submit("call", {"n": n})
            await cue.join()
            state = [s for s in cue.stats().services["api"].limits if s.kind == "adaptive"]
    assert limited
    assert max(most_after) <= 8
    assert most_after[0] <= 4  # halved right after the RateLimited
    assert state and state[0].limit <= 8


def test_adaptive_needs_a_concurrent_ceiling() -> None:
    """adaptive=True without concurrent= is refused naming the fix."""
    cue = runcue.Cue()
    with pytest.raises(ValueError, match="concurrent="):
        cue.service("api", adaptive=True)


# ---------------------------------------------------------------------------- tenants


@pytest.mark.anyio
async def test_a_big_backlog_delays_another_tenant_by_one_slot(make_cue: CueFactory) -> None:
    """Tenant A queued 2,000 works on a concurrent=1 service; B's first work starts after at
    most one more of A's."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    order: list[str] = []
    b_started = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        order.append(work.tenant)
        if work.tenant == "b":
            b_started.set()
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(20):
        async with cue:
            for n in range(2_000):
                await cue.submit("call", {"n": n}, tenant="a")
            await anyio.wait_all_tasks_blocked()
            before = len(order)
            await cue.submit("call", {"n": 0}, tenant="b")
            await b_started.wait()
            assert order.index("b") - before <= 2
            await cue.stop(timeout=0)


@pytest.mark.anyio
async def test_weights_share_and_priority_orders_within_a_tenant(make_cue: CueFactory) -> None:
    """Weight 2 gets two starts for every one of weight 1; within a tenant, priority first."""
    cue = make_cue()
    cue.service("api", concurrent=1, tenants=runcue.Tenants(weights={"big": 2.0}))
    gate = anyio.Event()
    order: list[tuple[str, int]] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        if work.params["n"] < 0:
            await gate.wait()
            return
        order.append((work.tenant, work.params["n"]))

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("call", {"n": -1}, tenant="gate")
            for n in range(6):
                await cue.submit("call", {"n": n}, tenant="big")
                await cue.submit("call", {"n": n}, tenant="small", priority=0.1 * n)
            gate.set()
    tenants = [tenant for tenant, _ in order]
    assert tenants[:9].count("big") == 6 and tenants[:9].count("small") == 3
    small = [n for tenant, n in order if tenant == "small"]
    assert small == [5, 4, 3, 2, 1, 0]  # higher priority first, within the tenant


def test_a_tenant_rate_holds_one_tenant_and_serves_the_others() -> None:
    """Tenants(rates={"a": "2/min"}): tenant a gets 2 starts a minute, b runs freely
    meanwhile; rate="..." gives every tenant its own."""
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def main() -> None:
        cue = runcue.Cue(seed=1)
        cue.service("api", concurrent=2, tenants=runcue.Tenants(rates={"a": "2/min"}))

        @cue.task("call", uses="api")
        async def call(work: runcue.WorkUnit) -> None:
            starts[work.tenant].append(anyio.current_time())
            await anyio.sleep(1)

        async with cue:
            for n in range(6):
                await cue.submit("call", {"n": n}, tenant="a")
            for n in range(6):
                await cue.submit("call", {"n": n}, tenant="b")

    on_virtual_clock(main)
    a = sorted(starts["a"])
    assert all(later - first >= 60 for first, later in zip(a, a[2:]))
    assert max(starts["b"]) < 10  # b never waited for a's rate


@pytest.mark.anyio
async def test_a_tenant_key_function_shares_without_tenant_arguments(
    make_cue: CueFactory,
) -> None:
    """Tenants(key=...) reads each work's tenant; work.tenant tells it."""
    cue = make_cue()
    cue.service("api", tenants=runcue.Tenants(key=lambda work: work.params["customer"]))
    seen: list[str] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        seen.append(work.tenant)

    with anyio.fail_after(5):
        async with cue:
            await cue.submit("call", {"customer": "acme"})
            await cue.submit("call", {"customer": "globex"}, tenant="override")
    assert sorted(seen) == ["acme", "override"]


# ---------------------------------------------------------------------------- fail fast


def test_a_spent_daily_window_fails_work_at_once_with_max_wait() -> None:
    """rate="2/day" with max_wait=60: the third work fails at once, naming the window and
    when it frees, instead of waiting a day."""
    errors: list[BaseException] = []

    async def main() -> float:
        cue = runcue.Cue(seed=1)
        cue.service("api", rate="2/day", max_wait=60)

        @cue.task("call", uses="api")
        async def call(work: runcue.WorkUnit) -> None:
            pass

        async with cue:
            began = anyio.current_time()
            ids = [await cue.submit("call", {"n": n}) for n in range(4)]
            for work_id in ids:
                try:
                    await cue.wait(work_id)
                except runcue.QuotaExhausted as exc:
                    errors.append(exc)
            took = anyio.current_time() - began
        return took

    elapsed = on_virtual_clock(main)
    assert elapsed < 1.0
    assert len(errors) == 2
    error = errors[0]
    assert isinstance(error, runcue.QuotaExhausted)
    assert "max_wait=60s" in str(error) and "'2/day'" in str(error)
    assert "next slot in 1d 0h" in str(error)
    assert error.frees_in > 86_000


@pytest.mark.anyio
async def test_max_wait_does_not_fail_work_that_waits_for_a_slot(make_cue: CueFactory) -> None:
    """A full concurrency limit is not a spent window: work waits for it whatever max_wait."""
    cue = make_cue()
    cue.service("api", concurrent=1, max_wait=0.001)

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.02)

    with anyio.fail_after(5):
        async with cue:
            ids = [await cue.submit("call", {"n": n}) for n in range(3)]
            for work_id in ids:
                await cue.wait(work_id)
    assert cue.stats().completed == 3
