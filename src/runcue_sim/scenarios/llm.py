"""llm: calls to a fake LLM API limited in requests and tokens per window, with 429s."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import runcue

from ..fake import Sim
from ..fake_llm import FakeLLM

NAME = "llm"
DESCRIPTION = "chat completions under requests and tokens per minute (a fake LLM API with 429s)"
DETAILS = """\
Each item is one `complete` work on service `llm`, a fake chat-completion API that limits
requests (--rate-limit, default 120/min) and tokens (--tokens, default 20000/min) in sliding
windows, answers with OpenAI-style x-ratelimit-* headers and 429 + retry-after when a request
would exceed them. Each work estimates its tokens (its prompt plus max_tokens, random per item)
and charges what the answer's usage says; the handler hands the headers to work.observe().
The summary shows the most requests and tokens the server saw in any window: never above its
limits when runcue keeps the client within them."""

DEFAULT_RATE = "120/min"
DEFAULT_TOKENS = "20000/min"


def setup(cue: runcue.Cue, sim: Sim) -> Callable[[int], Awaitable[None]]:
    """Register the scenario on ``cue``; return the coroutine that submits one item."""
    workload = sim.workload
    rate = workload.rate or DEFAULT_RATE
    tokens = workload.tokens or DEFAULT_TOKENS
    (requests_spec, *_), (tokens_spec, *_) = runcue.parse_rate(rate), runcue.parse_rate(tokens)
    server = FakeLLM(
        rpm=requests_spec.limit,
        # The server keeps one period for both windows: the tokens limit, scaled to it.
        tpm=max(1, round(tokens_spec.limit * requests_spec.period / tokens_spec.period)),
        period=requests_spec.period,
        latency=workload.latency,
        seed=workload.seed,
    )
    cue.service("llm", rate=rate, concurrent=workload.concurrent, costs={"tokens": tokens})
    store = sim.store
    biggest = max(1, min(1000, tokens_spec.limit // 4))

    def size(item: int) -> tuple[int, int]:
        draw = random.Random(f"{workload.seed}/llm/{item}")
        prompt = draw.randint(biggest // 10, biggest // 2)
        return prompt, draw.randint(biggest // 10, biggest - prompt)

    def estimate(work: runcue.WorkUnit) -> dict[str, float]:
        prompt, most = size(work.params["item"])
        return {"tokens": prompt + most}

    @cue.task("complete", uses="llm", cost=estimate, retry=3)
    async def complete(work: runcue.WorkUnit) -> int:
        prompt, most = size(work.params["item"])
        body = {"id": work.params["item"], "prompt_tokens": prompt, "max_tokens": most}
        status, headers, answer = await server.respond(
            "POST", "/v1/chat/completions", json.dumps(body).encode()
        )
        work.observe(headers)
        if status == 429:
            raise runcue.RateLimited(retry_after=float(headers.get("retry-after", "1")))
        used = int(answer["usage"]["total_tokens"])
        work.charge(tokens=used)
        store.put(f"response/{work.params['item']}")
        return used

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return store.exists(f"input/{work.params['item']}")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not store.exists(f"response/{work.params['item']}")

    def report() -> dict[str, Any]:
        stats = server.stats
        return {
            "server": {
                "period": server.period,
                "requests_limit": server.rpm,
                "tokens_limit": server.tpm,
                "most_requests_in_window": stats.most_requests_accepted,
                "most_tokens_in_window": stats.most_tokens_accepted,
                "answered": stats.accepted,
                "rejected_429": stats.rejected,
                "tokens_used": stats.tokens_used,
            }
        }

    sim.report = report

    async def submit(item: int) -> None:
        await cue.submit("complete", {"item": item})

    return submit
