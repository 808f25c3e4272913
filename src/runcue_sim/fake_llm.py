"""A fake LLM HTTP API on loopback, and a minimal client for it: no network, no dependencies.

This module owns :class:`FakeLLM`, a small HTTP/1.1 server on AnyIO (asyncio or trio) that
answers like a rate-limited chat-completion API, and :func:`post_json`, a raw HTTP/1.1 client
over AnyIO streams. runcue-sim's ``llm`` scenario, the offline example and the tests use them.

The API:

``POST /v1/chat/completions`` with a JSON object body:

* ``max_tokens`` (int >= 1, default 16): the most completion tokens the answer may use;
* ``prompt_tokens`` (int >= 0), or else ``prompt`` (a string, counted as one token per four
  characters, rounded up), or else 0;
* ``id`` (optional, any JSON scalar): keys the random draw (below); the arrival number if absent.

It answers:

* **200** ``{"id", "object": "chat.completion", "usage": {"prompt_tokens",
  "completion_tokens", "total_tokens"}}``; the completion tokens are drawn uniformly in
  ``[1, max_tokens]`` from ``random.Random(f"{seed}/{id}")``, so a seed and the same ids give
  the same answers whatever order requests arrive in;
* **429** ``{"error": {"type": "requests" | "tokens", "message"}}`` with ``retry-after``
  (whole seconds, rounded up) and ``retry-after-ms`` when the request would exceed a limit;
  a rejected request is not counted in the windows;
* **400** for a body it cannot read, or a request whose estimate exceeds the whole token limit
  (it could never be served); **404** for another path, **405** for another method.

Both 200 and 429 carry OpenAI-style headers: ``x-ratelimit-{limit,remaining,reset}-{requests,
tokens}``, the reset as a Go-style duration until the window is empty again.

**Limits, as the server counts them.** Two exact sliding windows of ``period`` seconds over the
injected ``clock`` (default :func:`anyio.current_time`): at most ``rpm`` requests, and at most
``tpm`` tokens. A request is admitted when the requests in the window plus one fit ``rpm`` and
the tokens in the window plus its *estimate* (``prompt_tokens + max_tokens``) fit ``tpm``; it
is counted at its estimate until it is answered (after ``latency`` seconds), then at its actual
total: the same reserve-then-settle model as runcue's cost windows.

**What it records** (:class:`FakeLLMStats`): at every arrival, admitted or not, the load the
request met (requests in the window plus one; tokens in the window plus its estimate). The
largest of each, ``most_requests_in_window`` and ``most_tokens_in_window``, say whether a
client stayed within the limits (they are <= ``rpm`` / ``tpm`` exactly when no request was
rejected for that limit). Windows are counted at arrival times, on the server's side of the
loopback: a client enforcing the same limits on its own start times may see a few
milliseconds of skew.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["FakeLLM", "FakeLLMStats", "format_duration", "post_json"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


def format_duration(seconds: float) -> str:
    """Seconds as a Go-style duration, the way OpenAI writes resets: ``"20ms"``, ``"1s"``,
    ``"6m0s"``, ``"1h2m3.5s"``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = f"{round(rest, 3):g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


class _Window:
    """Amounts counted at their arrival times, exact over ``period`` seconds."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.cells: deque[list[float]] = deque()  # [time, amount]
        self.total = 0.0

    def _prune(self, now: float) -> None:
        while self.cells and self.cells[0][0] + self.period <= now:
            self.total -= self.cells.popleft()[1]
        if not self.cells:
            self.total = 0.0

    def load(self, now: float) -> float:
        self._prune(now)
        return self.total

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self.cells)

    def add(self, now: float, amount: float) -> list[float]:
        cell = [now, amount]
        self.cells.append(cell)
        self.total += amount
        return cell

    def settle(self, cell: list[float], actual: float, now: float) -> None:
        self._prune(now)
        if self.cells and cell[0] + self.period > now:
            self.total += actual - cell[1]
        cell[1] = actual

    def free_at(self, excess: float, now: float) -> float:
        """When enough leaves the window to free ``excess``."""
        self._prune(now)
        freed = 0.0
        for time, amount in self.cells:
            freed += amount
            if freed >= excess:
                return time + self.period
        return now + self.period

    def empty_at(self, now: float) -> float:
        self._prune(now)
        return self.cells[-1][0] + self.period if self.cells else now


@dataclass
class FakeLLMStats:
    """What the fake server saw (see the module docstring)."""

    accepted: int = 0
    rejected: int = 0
    """429 answers."""
    invalid: int = 0
    """400 answers."""
    most_requests_in_window: int = 0
    most_tokens_in_window: float = 0
    most_requests_accepted: int = 0
    """The most requests in any window counting only those the server accepted."""
    most_tokens_accepted: float = 0
    """The most tokens in any window counting only accepted requests (never above ``tpm``)."""
    tokens_used: int = 0
    """Total tokens of the answered requests."""


@dataclass
class _Admitted:
    """A request being answered: counted at its estimate until then."""

    key: str
    prompt_tokens: int
    completion_tokens: int
    token_cell: list[float]


class FakeLLM:
    """The fake API: ``async with FakeLLM(rpm=60, tpm=10_000).running() as llm: llm.port``."""

    def __init__(
        self,
        *,
        rpm: int = 500,
        tpm: int = 90_000,
        period: float = 60.0,
        latency: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if rpm < 1 or tpm < 1 or not period > 0 or not latency >= 0:
            msg = (
                f"need rpm, tpm >= 1, period > 0 and latency >= 0; "
                f"got {rpm}, {tpm}, {period}, {latency}"
            )
            raise ValueError(msg)
        self.rpm, self.tpm, self.period = rpm, tpm, period
        self.latency = latency
        self.seed = seed
        self.host = host
        self.port = 0
        self.stats = FakeLLMStats()
        self._clock = clock if clock is not None else anyio.current_time
        self._requests = _Window(period)
        self._tokens = _Window(period)
        self._arrivals = 0

    @property
    def url(self) -> str:
        """The base URL once serving."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ the pure core

    def _limit_headers(self, now: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, self.rpm - self._requests.count(now))),
            "x-ratelimit-reset-requests": format_duration(self._requests.empty_at(now) - now),
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(
                max(0, self.tpm - math.ceil(self._tokens.load(now)))
            ),
            "x-ratelimit-reset-tokens": format_duration(self._tokens.empty_at(now) - now),
        }

    def admit(self, body: bytes, now: float) -> _Admitted | tuple[int, dict[str, str], Any]:
        """A request arrives: admit it (counted at its estimate) or answer it at once."""
        try:
            request = json.loads(body) if body else {}
            if not isinstance(request, dict):
                raise TypeError
            max_tokens = request.get("max_tokens", 16)
            prompt = request.get("prompt_tokens")
            if prompt is None:
                text = request.get("prompt", "")
                if not isinstance(text, str):
                    raise TypeError
                prompt = math.ceil(len(text) / 4)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise TypeError
            if isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 0:
                raise TypeError
        except (ValueError, TypeError):
            self.stats.invalid += 1
            message = "the body must be JSON with max_tokens >= 1 and prompt_tokens >= 0"
            return 400, {}, {"error": {"type": "invalid_request", "message": message}}
        estimate = prompt + max_tokens
        if estimate > self.tpm:
            self.stats.invalid += 1
            message = f"request too large: {estimate} tokens is more than {self.tpm} per window"
            return 400, {}, {"error": {"type": "request_too_large", "message": message}}
        self._arrivals += 1
        requests = self._requests.count(now) + 1
        tokens = self._tokens.load(now) + estimate
        stats = self.stats
        stats.most_requests_in_window = max(stats.most_requests_in_window, requests)
        stats.most_tokens_in_window = max(stats.most_tokens_in_window, tokens)
        over = None
        if requests > self.rpm:
            over, free_at = "requests", self._requests.free_at(requests - self.rpm, now)
        elif tokens > self.tpm:
            over, free_at = "tokens", self._tokens.free_at(tokens - self.tpm, now)
        if over is not None:
            stats.rejected += 1
            wait = max(0.0, free_at - now)
            headers = self._limit_headers(now)
            headers["retry-after"] = str(math.ceil(wait))
            headers["retry-after-ms"] = str(math.ceil(wait * 1000))
            message = f"rate limit reached for {over}; try again in {format_duration(wait)}"
            return 429, headers, {"error": {"type": over, "message": message}}
        stats.most_requests_accepted = max(stats.most_requests_accepted, requests)
        stats.most_tokens_accepted = max(stats.most_tokens_accepted, tokens)
        key = str(request.get("id", self._arrivals))
        completion = random.Random(f"{self.seed}/{key}").randint(1, max_tokens)
        self._requests.add(now, 1)
        return _Admitted(key, prompt, completion, self._tokens.add(now, estimate))

    def answer(self, admitted: _Admitted, now: float) -> tuple[int, dict[str, str], Any]:
        """Answer an admitted request: its tokens now count at their actual total."""
        total = admitted.prompt_tokens + admitted.completion_tokens
        self._tokens.settle(admitted.token_cell, total, now)
        self.stats.accepted += 1
        self.stats.tokens_used += total
        usage = {
            "prompt_tokens": admitted.prompt_tokens,
            "completion_tokens": admitted.completion_tokens,
            "total_tokens": total,
        }
        body = {"id": f"chatcmpl-{admitted.key}", "object": "chat.completion", "usage": usage}
        return 200, self._limit_headers(now), body

    async def respond(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        """One request, end to end (waits ``latency`` while it is being answered)."""
        if path.split("?", 1)[0] != "/v1/chat/completions":
            return 404, {}, {"error": {"type": "not_found", "message": f"no route {path}"}}
        if method != "POST":
            return 405, {"allow": "POST"}, {"error": {"type": "method", "message": "use POST"}}
        admitted = self.admit(body, self._clock())
        if not isinstance(admitted, _Admitted):
            return admitted
        if self.latency:
            await anyio.sleep(self.latency)
        return self.answer(admitted, self._clock())

    # ------------------------------------------------------------------ the HTTP shell

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on a free loopback port and serve until cancelled (``task_status`` gets the
        port, for ``await task_group.start(llm.serve)``)."""
        async with await anyio.create_tcp_listener(local_host=self.host, local_port=0) as listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(self.port)
            await listener.serve(self._connection)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeLLM]:
        """Serve in the background for the duration of the ``async with``."""
        async with anyio.create_task_group() as group:
            await group.start(self.serve)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = _header_dict(lines[1:])
                length = headers.get("content-length", "0")
                if len(parts) != 3 or not length.isdigit() or int(length) > _MAX_BODY:
                    await _send(stream, 400, {}, {"error": {"type": "bad_request"}}, close=True)
                    return
                method, path, version = parts
                try:
                    body = await reader.receive_exactly(int(length)) if int(length) else b""
                except (anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                status, extra, payload = await self.respond(method, path, body)
                close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
                try:
                    await _send(stream, status, extra, payload, close=close)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                if close:
                    return


def _header_dict(lines: list[str]) -> dict[str, str]:
    """Header lines as a dict, names lower-cased, repeated fields joined with ', '."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


async def _send(
    stream: anyio.abc.ByteSendStream,
    status: int,
    headers: Mapping[str, str],
    payload: Any,
    *,
    close: bool,
) -> None:
    body = json.dumps(payload).encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"connection: {'close' if close else 'keep-alive'}",
    ]
    await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


async def post_json(
    host: str, port: int, path: str, payload: Any
) -> tuple[int, dict[str, str], Any]:
    """POST ``payload`` as JSON over one fresh HTTP/1.1 connection; return the status, the
    headers (names lower-cased) and the decoded JSON body."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(head.encode("latin-1") + body)
        reader = BufferedByteReceiveStream(stream)
        raw = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = _header_dict(lines[1:])
        length = int(headers.get("content-length", "0"))
        data = await reader.receive_exactly(length) if length else b""
    return status, headers, json.loads(data) if data else None
