"""The pure limits composed against the fake LLM server's core, on one simulated timeline."""

from __future__ import annotations

import heapq
import json
import math
import random

from runcue._costs import CostLimiter, CostReservation
from runcue._headers import read_rate_limit_headers
from runcue._observed import BudgetReservation, ServerBudget
from runcue._rate import RateLimiter, parse_rate
from runcue_sim.fake_llm import FakeLLM

SECONDS = 600.0


def _run(
    *, client_tpm: int, budget: ServerBudget | None = None, concurrency: int = 20
) -> tuple[FakeLLM, float]:
    """Drive random-sized requests through declared windows (and an observed budget) into a
    server allowing 60 requests and 6,000 tokens a minute; return it and the tokens/min used."""
    rng = random.Random(4)
    now = 0.0
    server = FakeLLM(rpm=60, tpm=6000, seed=4, clock=lambda: now)
    costs = CostLimiter({"tokens": f"{client_tpm}/min"})
    rate = RateLimiter(parse_rate("60/min"), clock=lambda: now)
    events: list[tuple[float, int, object]] = []
    order = 0
    running = 0
    while now < SECONDS:
        while running < concurrency:
            body = {"prompt_tokens": rng.randint(50, 400), "max_tokens": rng.randint(50, 400)}
            estimate = {"tokens": body["prompt_tokens"] + body["max_tokens"]}
            observed = (
                budget.next_free({"requests": 1, **estimate}, now) if budget is not None else now
            )
            ready = max(costs.next_free(estimate, now), rate.next_free(now), observed)
            if ready > now:
                order += 1
                heapq.heappush(events, (ready if math.isfinite(ready) else now + 1, order, None))
                break
            handle = costs.reserve(estimate)
            held = budget.reserve({"requests": 1, **estimate}) if budget is not None else None
            assert rate.try_reserve()
            costs.commit(handle, now)
            rate.commit()
            if held is not None and budget is not None:
                budget.commit(held, now)
            admitted = server.admit(json.dumps(body).encode(), now)
            running += 1
            order += 1
            done = (admitted, handle, held)
            heapq.heappush(events, (now + rng.uniform(0.5, 3.0), order, done))
        now, _, payload = heapq.heappop(events)
        if payload is None:
            continue
        admitted, handle, held = payload  # type: ignore[misc]
        assert isinstance(handle, CostReservation)
        running -= 1
        if isinstance(admitted, tuple):
            _, headers, _ = admitted
            costs.settle(handle)
        else:
            _, headers, answer = server.answer(admitted, now)
            costs.settle(handle, {"tokens": answer["usage"]["total_tokens"]})
        if budget is not None:
            assert isinstance(held, BudgetReservation)
            limits = read_rate_limit_headers(headers, now_wall=0.0)
            budget.observe_limits(limits, now, answered=held)
            budget.settle(held)
    return server, server.stats.tokens_used / (SECONDS / 60)


def test_declared_windows_like_the_servers_never_get_a_429_and_use_the_budget() -> None:
    """Windows like the server's: no 429, no window over its limit, over 90% of tokens used."""
    server, per_minute = _run(client_tpm=6000)
    assert server.stats.rejected == 0
    assert server.stats.most_tokens_in_window <= 6000
    assert server.stats.most_requests_in_window <= 60
    assert per_minute > 0.9 * 6000


def test_the_observed_budget_only_tightens() -> None:
    """Adding what the server reports never causes a 429 and never lets more through."""
    server, per_minute = _run(client_tpm=6000, budget=ServerBudget())
    assert server.stats.rejected == 0
    assert server.stats.most_tokens_in_window <= 6000
    _, without = _run(client_tpm=6000)
    assert per_minute <= without


def test_declared_windows_looser_than_the_server_overshoot() -> None:
    """A client declaring twice the server's tokens gets 429s: the fake notices and records it."""
    server, _ = _run(client_tpm=12000)
    assert server.stats.rejected > 0
    assert server.stats.most_tokens_in_window > 6000
