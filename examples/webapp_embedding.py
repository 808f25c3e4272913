"""A cue inside an asyncio web app: started at startup, used by requests, stopped at shutdown.

The app serves thumbnails over HTTP on 127.0.0.1 (``asyncio.start_server``, an ephemeral
port). Making a thumbnail is slow work on a small "imaging" service (2 at once), so the app
keeps one long-lived cue: ``cue.start()`` in its startup hook, ``await cue.stop()`` in its
shutdown hook -- the lifespan pattern of ASGI frameworks. Each request submits work with
``cue.submit`` and awaits its outcome with ``cue.wait``:

- requests for the same image at the same moment share one piece of work (the task is
  declared ``dedup=True``: equal work already pending or running is not queued twice);
- a thumbnail already on disk is served without new work (``is_stale`` says it is up to date);
- an unknown image is answered 404 by the app itself, before any work is submitted.

Clients are asyncio tasks speaking plain HTTP/1.1 over loopback; nothing leaves the machine.

Run:  python examples/webapp_embedding.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import runcue

IMAGES = ["cat", "dog", "owl", "fox", "elk"]


def build_cue(folder: Path) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=30)
    cue.service("imaging", concurrent=2)

    @cue.task("thumbnail", uses="imaging", dedup=True)
    def thumbnail(work: runcue.WorkUnit) -> str:
        name: str = work.params["image"]
        original = (folder / "images" / f"{name}.img").read_text()
        time.sleep(0.1)  # resizing (a sync handler runs in a worker thread)
        with runcue.atomic_write(folder / "thumbs" / f"{name}.img") as handle:
            handle.write(f"64x64 {original}")
        return name

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not (folder / "thumbs" / f"{work.params['image']}.img").exists()

    return cue


class ThumbnailApp:
    """A minimal web app: ``GET /thumbnail/<name>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cue = build_cue(folder)
        self.work_ids: list[str] = []  # one per request that needed a thumbnail

    async def startup(self) -> None:
        self.cue.start()  # runs in the background until shutdown

    async def shutdown(self) -> None:
        await self.cue.stop(timeout=5)

    async def thumbnail(self, name: str) -> tuple[int, str]:
        if not (self.folder / "images" / f"{name}.img").exists():
            return 404, f"no image {name!r}"
        work_id = await self.cue.submit("thumbnail", {"image": name})
        self.work_ids.append(work_id)
        try:
            await asyncio.wait_for(self.cue.wait(work_id), timeout=10)
        except Exception as error:  # the handler's own exception, or our timeout
            return 500, f"could not make the thumbnail: {error!r}"
        return 200, (self.folder / "thumbs" / f"{name}.img").read_text()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.1 request per connection."""
        try:
            method, path, _ = (await reader.readline()).decode().split(" ", 2)
            while (await reader.readline()).strip():
                pass  # headers: not needed here
            if method == "GET" and path.startswith("/thumbnail/"):
                status, body = await self.thumbnail(path.removeprefix("/thumbnail/"))
            else:
                status, body = 404, "not found"
            payload = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


async def get(port: int, path: str) -> tuple[int, str]:
    """A client request: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


async def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / "images").mkdir()
        (folder / "thumbs").mkdir()
        for name in IMAGES:
            (folder / "images" / f"{name}.img").write_text(f"a picture of a {name}")
        app = ThumbnailApp(folder)
        await app.startup()
        server = await asyncio.start_server(app.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"startup: cue started; serving on 127.0.0.1:{port}")
        async with server:
            burst = [*IMAGES, "cat", "cat", "owl"]  # three requests repeat an image
            first = await asyncio.gather(*(get(port, f"/thumbnail/{n}") for n in burst))
            shared = len(burst) - len(set(app.work_ids))
            print(
                f"burst: {len(burst)} requests, {sum(s == 200 for s, _ in first)} answered 200;"
                f" {shared} of them joined work already queued for the same image"
            )
            again = await asyncio.gather(*(get(port, f"/thumbnail/{n}") for n in IMAGES))
            print(
                f"again: {len(again)} requests, {sum(s == 200 for s, _ in again)} answered 200,"
                f" served from disk (skipped by is_stale): {again[0][1]!r} ..."
            )
            status, body = await get(port, "/thumbnail/yak")
            print(f"unknown image: {status} {body}")
        await app.shutdown()
    stats = app.cue.stats()
    print(
        f"shutdown: cue stopped; {stats.completed} thumbnails made, {stats.skipped} skipped,"
        f" {stats.failed} failed"
    )


if __name__ == "__main__":
    asyncio.run(main())
