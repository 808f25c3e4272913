"""The fake LLM API: its counting on a hand-moved clock, and its HTTP shell on both backends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runcue._headers import parse_duration, read_rate_limit_headers
from runcue_sim.fake_llm import FakeLLM, format_duration, post_json

PATH = "/v1/chat/completions"


def _call(llm: FakeLLM, body: object, now: float) -> tuple[int, dict[str, str], Any]:
    """Admit and answer at once (no latency), as the server does."""
    admitted = llm.admit(str(body).replace("'", '"').encode(), now)
    if isinstance(admitted, tuple):
        return admitted
    return llm.answer(admitted, now)


# ---------------------------------------------------------------------------- the core


def test_an_answer_reports_usage_and_limit_headers() -> None:
    """A 200 has usage with completion tokens <= max_tokens and OpenAI-style headers."""
    llm = FakeLLM(rpm=60, tpm=1000, seed=3)
    status, headers, body = _call(llm, {"max_tokens": 50, "prompt_tokens": 20}, 0.0)
    assert status == 200
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 50
    assert usage["prompt_tokens"] == 20
    assert usage["total_tokens"] == 20 + usage["completion_tokens"]
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    requests, tokens = limits.get("requests"), limits.get("tokens")
    assert requests is not None and tokens is not None
    assert (requests.limit, requests.remaining, requests.reset_after) == (60, 59, 60.0)
    assert (tokens.limit, tokens.remaining) == (1000, 1000 - usage["total_tokens"])
    assert llm.stats.accepted == 1
    assert llm.stats.tokens_used == usage["total_tokens"]


def test_requests_over_rpm_get_429_with_retry_after() -> None:
    """The request that would exceed rpm gets a 429 saying when the window frees."""
    llm = FakeLLM(rpm=2, tpm=10_000)
    assert _call(llm, {"max_tokens": 1}, 0.0)[0] == 200
    assert _call(llm, {"max_tokens": 1}, 10.25)[0] == 200
    status, headers, body = _call(llm, {"max_tokens": 1}, 20.0)
    assert status == 429
    assert body["error"]["type"] == "requests"
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("40", "40000")
    assert read_rate_limit_headers(headers, now_wall=0.0).retry_after == 40.0
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert (llm.stats.rejected, llm.stats.most_requests_in_window) == (1, 3)
    assert _call(llm, {"max_tokens": 1}, 60.0)[0] == 200  # the first left the window


def test_a_request_in_progress_counts_at_its_estimate() -> None:
    """Until answered a request holds prompt + max_tokens; then its actual total."""
    llm = FakeLLM(rpm=100, tpm=100)
    running = llm.admit(b'{"max_tokens": 30, "prompt_tokens": 60}', 0.0)
    assert not isinstance(running, tuple)
    status, _, body = _call(llm, {"max_tokens": 10, "prompt_tokens": 5}, 1.0)
    assert (status, body["error"]["type"]) == (429, "tokens")
    assert llm.stats.most_tokens_in_window == 90 + 15
    _, headers, body = llm.answer(running, 2.0)
    used = body["usage"]["total_tokens"]
    assert headers["x-ratelimit-remaining-tokens"] == str(100 - used)
    fits = used + 15 <= 100
    assert _call(llm, {"max_tokens": 10, "prompt_tokens": 5}, 3.0)[0] == (200 if fits else 429)


def test_a_rejected_request_is_not_counted() -> None:
    """A 429 leaves the windows as they were."""
    llm = FakeLLM(rpm=1, tpm=100)
    _call(llm, {"max_tokens": 1}, 0.0)
    for _ in range(5):
        assert _call(llm, {"max_tokens": 1}, 1.0)[0] == 429
    assert _call(llm, {"max_tokens": 1}, 60.0)[0] == 200


def test_a_prompt_string_counts_one_token_per_four_characters() -> None:
    """Without prompt_tokens, a prompt string counts ceil(len / 4) tokens."""
    llm = FakeLLM()
    _, _, body = _call(llm, {"max_tokens": 1, "prompt": "x" * 9}, 0.0)
    assert body["usage"]["prompt_tokens"] == 3


def test_completions_are_keyed_on_the_seed_and_id_not_the_order() -> None:
    """The same seed and ids give the same usage in any arrival order."""
    first, second = FakeLLM(seed=7), FakeLLM(seed=7)
    ids = ["a", "b", "c", "d"]
    one = {i: _call(first, {"max_tokens": 1000, "id": i}, 0.0)[2]["usage"] for i in ids}
    two = {i: _call(second, {"max_tokens": 1000, "id": i}, 0.0)[2]["usage"] for i in ids[::-1]}
    assert one == two
    assert len({usage["completion_tokens"] for usage in one.values()}) > 1
    other = _call(FakeLLM(seed=8), {"max_tokens": 1000, "id": "a"}, 0.0)[2]["usage"]
    assert other != one["a"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"max_tokens": 0}',
        b'{"max_tokens": true}',
        b'{"max_tokens": 5, "prompt_tokens": -1}',
        b'{"max_tokens": 5, "prompt": 12}',
        b"\xff",
    ],
)
def test_a_body_it_cannot_read_is_a_400(body: bytes) -> None:
    """Bad JSON or bad fields answer 400 and count nothing."""
    llm = FakeLLM()
    status, _, payload = llm.admit(body, 0.0)  # type: ignore[misc]
    assert status == 400
    assert payload["error"]["type"] == "invalid_request"
    assert llm.stats.invalid == 1
    assert llm.stats.most_requests_in_window == 0


def test_a_request_larger_than_the_whole_token_limit_is_a_400() -> None:
    """An estimate above tpm could never be served: 400, not 429."""
    llm = FakeLLM(tpm=100)
    status, _, body = _call(llm, {"max_tokens": 90, "prompt_tokens": 20}, 0.0)
    assert (status, body["error"]["type"]) == (400, "request_too_large")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0.0, "0ms"),
        (1.0, "1s"),
        (360.0, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (61.25, "1m1.25s"),
    ],
)
def test_durations_are_written_the_way_openai_writes_them(seconds: float, text: str) -> None:
    """Resets are Go-style durations that read back to the same seconds."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-3)


def test_bad_settings_are_refused() -> None:
    """Limits and period must be positive, latency not negative."""
    with pytest.raises(ValueError, match="rpm"):
        FakeLLM(rpm=0)
    with pytest.raises(ValueError, match="latency"):
        FakeLLM(latency=-1)


# ---------------------------------------------------------------------------- over loopback


@pytest.mark.anyio
async def test_serves_completions_over_http() -> None:
    """A POST over loopback gets a 200 with usage and rate-limit headers."""
    with anyio.fail_after(10):
        async with FakeLLM(rpm=10, tpm=1000).running() as llm:
            assert llm.url == f"http://127.0.0.1:{llm.port}"
            status, headers, body = await post_json(
                llm.host, llm.port, PATH, {"max_tokens": 5, "prompt_tokens": 2}
            )
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 2
    assert headers["content-type"] == "application/json"
    assert read_rate_limit_headers(headers, now_wall=0.0).get("requests") is not None


@pytest.mark.anyio
async def test_answers_429_over_http_when_over_the_limit() -> None:
    """Over rpm, the HTTP answer is a 429 with retry-after."""
    with anyio.fail_after(10):
        async with FakeLLM(rpm=1).running() as llm:
            assert (await post_json(llm.host, llm.port, PATH, {"max_tokens": 1}))[0] == 200
            status, headers, body = await post_json(llm.host, llm.port, PATH, {"max_tokens": 1})
    assert status == 429
    assert int(headers["retry-after"]) >= 59
    assert body["error"]["type"] == "requests"


@pytest.mark.anyio
async def test_wrong_path_method_and_body_over_http() -> None:
    """404 for another path, 405 for another method, 400 for a bad body."""
    with anyio.fail_after(10):
        async with FakeLLM().running() as llm:
            assert (await post_json(llm.host, llm.port, "/v1/other", {}))[0] == 404
            assert (await post_json(llm.host, llm.port, PATH, [1]))[0] == 400
            async with await anyio.connect_tcp(llm.host, llm.port) as stream:
                await stream.send(b"GET /v1/chat/completions HTTP/1.1\r\nconnection: close\r\n\r\n")
                answer = b""
                async for chunk in stream:
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"allow: POST" in answer


@pytest.mark.anyio
async def test_keeps_the_connection_alive_between_requests() -> None:
    """Two requests on one connection get two answers; a garbled one gets a 400 and a close."""
    body = b'{"max_tokens": 3}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 17\r\n\r\n" + body
    with anyio.fail_after(10):
        async with (
            FakeLLM().running() as llm,
            await anyio.connect_tcp(llm.host, llm.port) as stream,
        ):
            await stream.send(request + request + b"GARBLED\r\n\r\n")
            answer = b""
            async for chunk in stream:
                answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.count(b"HTTP/1.1 400 Bad Request") == 1
    assert llm.stats.accepted == 2


@pytest.mark.anyio
async def test_concurrent_clients_are_all_counted() -> None:
    """Twenty concurrent requests are all answered and counted; the records say the most."""
    statuses: list[int] = []

    async def one(llm: FakeLLM, number: int) -> None:
        status, _, _ = await post_json(llm.host, llm.port, PATH, {"max_tokens": 4, "id": number})
        statuses.append(status)

    with anyio.fail_after(10):
        async with FakeLLM(rpm=15, tpm=10_000).running() as llm, anyio.create_task_group() as group:
            for number in range(20):
                group.start_soon(one, llm, number)
    assert sorted(statuses) == [200] * 15 + [429] * 5
    assert llm.stats.most_requests_in_window == 16  # over rpm: the client did not stay within
    assert (llm.stats.accepted, llm.stats.rejected) == (15, 5)


@pytest.mark.anyio
async def test_serve_reports_its_port_to_a_task_group() -> None:
    """serve() works under task_group.start(): the port comes back once listening."""
    llm = FakeLLM()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            port = await group.start(llm.serve)
            assert port == llm.port > 0
            status, _, _ = await post_json(llm.host, port, PATH, {"max_tokens": 1})
            group.cancel_scope.cancel()
    assert status == 200


@pytest.mark.anyio
async def test_a_request_being_answered_holds_its_estimate() -> None:
    """While answered a request counts at prompt + max_tokens, then at its actual total."""
    admitted = anyio.Event()

    def clock() -> float:
        admitted.set()  # the server reads the clock when it admits a request
        return anyio.current_time()

    llm = FakeLLM(rpm=100, tpm=100, latency=0.01, clock=clock)
    answers: list[int] = []

    async def slow() -> None:
        answers.append(
            (await llm.respond("POST", PATH, b'{"max_tokens": 60, "prompt_tokens": 30}'))[0]
        )

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await admitted.wait()
            status, _, body = await llm.respond("POST", PATH, b'{"max_tokens": 20}')
            assert (status, body["error"]["type"]) == (429, "tokens")
    assert answers == [200]
    assert llm.stats.most_tokens_in_window == 90 + 20
    used = llm.stats.tokens_used
    status, headers, _ = await llm.respond("POST", PATH, b'{"max_tokens": 1}')
    assert status == 200
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 100 - used - 1
