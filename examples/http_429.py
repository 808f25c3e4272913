"""An HTTP client that meets "429 Too Many Requests" and lets runcue honour Retry-After.

A fake dictionary API runs in this process on 127.0.0.1 (an ephemeral port, plain AnyIO
sockets). It allows 8 requests per half second; beyond that it answers 429 with a Retry-After
header saying when a slot frees up. The client does not know that limit: its "api" service
only caps it at 4 requests at once. Its handler is ordinary blocking code (``urllib`` from the
standard library, run in a worker thread by runcue); on a 429 it raises
``runcue.RateLimited(retry_after=...)``, and runcue pauses the whole service -- no request of
it starts until the pause is over -- then runs that work again without using up an attempt.

The example listens to runcue's events and checks the promise: how many 429s were honoured,
and that no request started while the service was paused. Nothing leaves the loopback
interface; the whole run is bounded to 30 seconds.

Run:  python examples/http_429.py            (asyncio)
      python examples/http_429.py trio       (trio)
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections import deque

import anyio
import anyio.abc

import runcue

WORDS = [
    *("cue", "rate", "limit", "pause", "retry", "header", "socket", "thread", "window", "slot"),
    *("burst", "queue", "token", "lease", "worker", "backoff", "jitter", "budget", "quota"),
    *("deadline", "latency", "request", "answer", "status"),
]
ALLOWED, PER = 8, 0.5  # the API's own limit: 8 requests per half second
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


class FakeApi:
    """A tiny HTTP/1.1 server: ``GET /words/<word>`` -> JSON, or 429 with Retry-After."""

    def __init__(self) -> None:
        self.admitted: deque[float] = deque()  # when each recent request was let through
        self.answered = 0
        self.refused = 0

    async def serve_one(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                request += await client.receive()
            word = request.split(b" ", 2)[1].decode().rsplit("/", 1)[-1]
            now = anyio.current_time()
            while self.admitted and self.admitted[0] <= now - PER:
                self.admitted.popleft()
            if len(self.admitted) >= ALLOWED:
                # Real APIs send whole seconds (or a date); fractions keep this demo short.
                wait = self.admitted[0] + PER - now
                status, extra, body = "429 Too Many Requests", f"Retry-After: {wait:.3f}\r\n", {}
                self.refused += 1
            else:
                self.admitted.append(now)
                status, extra, body = "200 OK", "", {"word": word, "letters": len(word)}
                self.answered += 1
            await anyio.sleep(0.01)  # the API thinks
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n{extra}Connection: close\r\n\r\n"
            )
            await client.send(head.encode() + payload)


def build_cue(base_url: str, retry_after: dict[str, float]) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=20)
    cue.service("api", concurrent=4)  # no rate: the client does not know the API's limit

    @cue.task("define", uses="api")
    def define(work: runcue.WorkUnit) -> dict[str, object]:
        url = f"{base_url}/words/{work.params['word']}"
        try:
            with NO_PROXY.open(url, timeout=5) as response:
                answer: dict[str, object] = json.load(response)
                return answer
        except urllib.error.HTTPError as error:
            with error:
                if error.code != 429:
                    raise
                seconds = float(error.headers.get("Retry-After", "1"))
            retry_after[work.id] = seconds
            raise runcue.RateLimited(retry_after=seconds) from None

    return cue


async def main() -> None:
    api = FakeApi()
    retry_after: dict[str, float] = {}  # work id -> the Retry-After of its latest 429
    pauses: list[tuple[float, float]] = []  # (paused at, paused until), on runcue's clock
    starts: list[float] = []

    def watch(event: runcue.WorkEvent) -> None:
        if event.kind == "paused":
            pauses.append((event.time, event.time + retry_after[event.work.id]))
        elif event.kind == "started":
            starts.append(event.time)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            server.start_soon(listener.serve, api.serve_one)
            begun = anyio.current_time()
            cue = build_cue(f"http://127.0.0.1:{port}", retry_after)
            cue.subscribe(watch)
            async with cue:
                ids = [await cue.submit("define", {"word": word}) for word in WORDS]
                answers = [await cue.wait(work_id) for work_id in ids]
            elapsed = anyio.current_time() - begun
            server.cancel_scope.cancel()
    slack = 0.001  # the event is stamped a moment after runcue set the pause
    early = sum(1 for at in starts for since, until in pauses if since < at < until - slack)
    letters = sum(answer["letters"] for answer in answers)
    print(f"{len(answers)} words looked up in {elapsed:.1f}s ({letters} letters in all)")
    print(f"the API answered {api.answered} requests and refused {api.refused} with 429")
    print(f"429s honoured: {len(pauses)} (the 'api' service paused for each Retry-After)")
    print(f"requests started while the service was paused: {early}")
    if early or len(pauses) != api.refused or len(answers) != len(WORDS):
        raise SystemExit("runcue did not honour a Retry-After")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
