"""Cost windows through a live cue, property-tested on trio's virtual clock: under random
estimates, actual costs, durations, failures, retries and cancellations, no window of any
dimension ever holds more than its limit of committed cost, and every reservation the cue
made is settled or released exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import runcue
from runcue import _costs

WINDOWS = {"tokens": "3000/min;9000/5min", "images": "4/20s"}
LIMITS = {"tokens": [(3000, 60.0), (9000, 300.0)], "images": [(4, 20.0)]}


class AuditedLimiter(_costs.CostLimiter):
    """The cue's cost limiter, recording every reservation and what happened to it."""

    def __init__(self, costs: dict[str, str]) -> None:
        super().__init__(costs)
        self.made: list[_costs.CostReservation] = []
        self.ends: Counter[int] = Counter()

    def reserve(self, estimate: Any) -> _costs.CostReservation:
        handle = super().reserve(estimate)
        self.made.append(handle)
        return handle

    def release(self, handle: _costs.CostReservation) -> bool:
        self.ends[id(handle)] += 1
        return super().release(handle)

    def settle(self, handle: _costs.CostReservation, actual: Any = None) -> bool:
        self.ends[id(handle)] += 1
        return super().settle(handle, actual)


works = st.lists(
    st.fixed_dictionaries(
        {
            "tokens": st.integers(0, 1500),
            "images": st.integers(0, 2),
            "spend": st.floats(0.0, 1.0),
            "duration": st.floats(0.0, 30.0),
            "outcome": st.sampled_from(["ok", "ok", "ok", "fail", "flaky", "cancel"]),
            "gap": st.floats(0.0, 10.0),
        }
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plan=works)
def test_no_cost_window_ever_holds_more_than_its_limit(plan: list[dict[str, Any]]) -> None:
    """Committed cost inside any window never exceeds its limit (actuals <= estimates), and
    each reservation ends exactly once."""
    audit = AuditedLimiter(WINDOWS)
    commits: dict[str, list[tuple[float, float]]] = {"tokens": [], "images": []}

    async def main() -> None:
        cue = runcue.Cue(seed=3)
        cue.service("gen", concurrent=4, costs=WINDOWS)
        cost = cue._services["gen"].cost
        assert cost is not None
        cost.limiter = audit

        @cue.task(
            "make",
            uses="gen",
            retry=2,
            backoff=0.5,
            cost=lambda work: {"tokens": work.params["tokens"], "images": work.params["images"]},
        )
        async def make(work: runcue.WorkUnit) -> None:
            params = work.params
            now = anyio.current_time()
            actual = {
                "tokens": round(params["tokens"] * params["spend"]),
                "images": params["images"],
            }
            for name, amount in actual.items():
                commits[name].append((now, amount))
            work.charge(**actual)
            await anyio.sleep(params["duration"])
            if params["outcome"] == "fail" or (params["outcome"] == "flaky" and work.attempt == 1):
                raise RuntimeError("the handler failed")

        async with cue:
            ids = []
            for index, params in enumerate(plan):
                ids.append(await cue.submit("make", {"i": index, **params}))
                await anyio.sleep(params["gap"])
            for work_id, params in zip(ids, plan):
                if params["outcome"] == "cancel":
                    await cue.cancel(work_id)

    trio.run(main, clock=MockClock(autojump_threshold=0))
    for name, windows in LIMITS.items():
        events = sorted(commits[name])
        for limit, period in windows:
            for index, (end, _) in enumerate(events):
                # (the limiter's own float expression: a commit leaves at when + period)
                inside = sum(amount for when, amount in events[: index + 1] if when + period > end)
                assert inside <= limit, (name, limit, period, end, inside)
    assert all(audit.ends[id(handle)] == 1 for handle in audit.made), audit.ends
    for handle in audit.made:
        assert handle.state in (_costs.HoldState.SETTLED, _costs.HoldState.RELEASED)
