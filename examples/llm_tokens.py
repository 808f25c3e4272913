"""An LLM client that counts tokens, settles on actual use, and listens to the server.

A fake chat-completion API runs in this process on 127.0.0.1 (``runcue_sim.fake_llm``: an
ephemeral port, plain AnyIO sockets). It allows 40 requests and 6,000 tokens per 2 seconds,
answers with OpenAI-style ``x-ratelimit-*`` headers and the usage in the body, and says 429
(with ``retry-after``) when a request would go over.

The runcue client declares those limits (``rate="40/2s"``, ``costs={"tokens": "6000/2s"}``)
and estimates each request's tokens (its prompt plus ``max_tokens``); after the call it
charges what the usage says (``work.charge``), which gives the unused part of the estimate
back at once, and hands the response headers to ``work.observe``. Another program uses the
same API key at the same time, outside runcue, for about a third of the tokens: the server's
headers tell runcue what is really left, so it leaves room for the other program; the 429s
that still happen (the other program's calls land between two of runcue's) pause the service
for the ``retry-after`` the server gave (``RateLimited``), and the work runs again. For an
exact shared budget between cooperating processes, use a shared store (``RedisStore``).

It prints what runcue used and how many 429s it met, and what the server saw: the most tokens
and requests it accepted in any 2-second window (never above its limits) and how many
requests it refused.

Run:  python examples/llm_tokens.py            (asyncio)
      python examples/llm_tokens.py trio       (trio)
"""

from __future__ import annotations

import random
import sys

import anyio

import runcue
from runcue_sim.fake_llm import FakeLLM, post_json

REQUESTS, TOKENS, PERIOD = 40, 6_000, 2.0


def client(name: str, host: str, port: int) -> tuple[runcue.Cue, dict[str, int]]:
    """The client: a cue whose service is the API, with its token budget."""
    cue = runcue.Cue(seed=1)
    cue.service("llm", rate=f"{REQUESTS}/{PERIOD:g}s", costs={"tokens": f"{TOKENS}/{PERIOD:g}s"})
    used = {"requests": 0, "tokens": 0, "429s": 0}

    @cue.task(
        "complete",
        uses="llm",
        cost=lambda work: {"tokens": work.params["prompt"] + work.params["max_tokens"]},
        retry=5,
    )
    async def complete(work: runcue.WorkUnit) -> int:
        body = {
            "id": f"{name}-{work.params['n']}",
            "prompt_tokens": work.params["prompt"],
            "max_tokens": work.params["max_tokens"],
        }
        status, headers, answer = await post_json(host, port, "/v1/chat/completions", body)
        work.observe(headers)  # what is left of the shared budget, until when
        if status == 429:
            used["429s"] += 1
            raise runcue.RateLimited(retry_after=float(headers["retry-after-ms"]) / 1000)
        tokens = int(answer["usage"]["total_tokens"])
        work.charge(tokens=tokens)  # the actual use: the rest of the estimate comes back
        used["requests"] += 1
        used["tokens"] += tokens
        return tokens

    return cue, used


async def other_app(host: str, port: int, seen: dict[str, int]) -> None:
    """Another program on the same API key, outside runcue: about a third of the tokens."""
    n = 0
    while True:
        n += 1
        body = {"id": f"other-{n}", "prompt_tokens": 100, "max_tokens": 300}
        status, _, answer = await post_json(host, port, "/v1/chat/completions", body)
        if status == 200:
            seen["tokens"] += int(answer["usage"]["total_tokens"])
        await anyio.sleep(0.25)


async def main() -> None:
    server = FakeLLM(rpm=REQUESTS, tpm=TOKENS, period=PERIOD, latency=0.05, seed=7)
    rng = random.Random(3)
    other = {"tokens": 0}
    with anyio.fail_after(60):
        async with server.running(), anyio.create_task_group() as background:
            background.start_soon(other_app, server.host, server.port, other)
            cue, used = client("runcue", server.host, server.port)
            async with cue:
                for n in range(60):
                    prompt = rng.randint(50, 150)
                    await cue.submit(
                        "complete", {"n": n, "prompt": prompt, "max_tokens": rng.randint(50, 250)}
                    )
            background.cancel_scope.cancel()
    print(
        f"runcue: {cue.stats().completed} answers, {used['tokens']:,} tokens, {used['429s']}"
        f" 429s met; the other app: {other['tokens']:,} tokens"
    )
    stats = server.stats
    print(
        f"server: most {stats.most_tokens_accepted:,.0f} of {TOKENS:,} tokens and"
        f" {stats.most_requests_accepted} of {REQUESTS} requests accepted in any {PERIOD:g}s"
        " window;"
        f" {stats.rejected} requests refused"
    )


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
