"""A trio program that runs a cue in its own nursery: a polite crawler of a fake web site.

The program is trio from top to bottom -- ``trio.run``, a nursery, ``trio.sleep``, a trio
memory channel -- and runcue fits in as one more child of the nursery:
``await nursery.start(cue.run)`` returns once the cue is running, and ``await cue.stop()``
ends it. The crawler's handler fetches a page (a fake, offline site), saves it, and submits
every link it finds from inside the handler; the site's service allows 3 requests at once and
50 per second. A page already saved is skipped by ``is_stale``; a page already queued is not
queued twice (submitting equal work returns the id of the work already pending). Next to the
cue, a plain trio task prints each page as it is saved, fed by ``cue.subscribe`` through a
memory channel.

Run:  python examples/trio_program.py
"""

from __future__ import annotations

import math

import trio

import runcue

PAGES = 20
SITE = {  # a small site: every page links to three others, all reachable from /page/0
    f"/page/{n}": [f"/page/{(n * k + 1) % PAGES}" for k in (1, 3, 7)] for n in range(PAGES)
}


def build_cue(saved: dict[str, list[str]], found: list[str]) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=20)
    cue.service("site", rate="50/sec", concurrent=3)

    @cue.task("fetch", uses="site")
    async def fetch(work: runcue.WorkUnit) -> int:
        url = work.params["url"]
        await trio.sleep(0.02)  # the request; trio calls are fine in handlers under trio
        links = SITE[url]
        saved[url] = links
        for link in links:
            found.append(link)
            await cue.submit("fetch", {"url": link})
        return len(links)

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return work.params["url"] not in saved

    return cue


async def show_progress(events: trio.MemoryReceiveChannel[runcue.WorkEvent]) -> None:
    """A plain trio task: prints every saved page until the channel closes."""
    async with events:
        async for event in events:
            if event.kind == "completed":
                print(f"  saved {event.work.params['url']:<9} {event.work.result} links")


async def main() -> None:
    saved: dict[str, list[str]] = {}
    found: list[str] = []
    cue = build_cue(saved, found)
    send, receive = trio.open_memory_channel[runcue.WorkEvent](math.inf)
    cue.subscribe(send.send_nowait)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_progress, receive)
        await nursery.start(cue.run)  # the cue is running when this returns
        await cue.submit("fetch", {"url": "/page/0"})
        with trio.fail_after(10):
            await cue.join()  # every page fetched, every link followed
        await cue.stop()
        send.close()
    stats = cue.stats()
    queued_twice = len(found) + 1 - stats.submitted
    print(f"crawled {len(saved)} of {PAGES} pages, following {len(found)} links:")
    print(f"  {stats.skipped} led to a page already saved (skipped by is_stale)")
    print(f"  {queued_twice} led to a page already queued (not queued twice)")
    print(f"at most {stats.services['site'].max_running} requests in flight at once")


if __name__ == "__main__":
    trio.run(main)
