"""The seed README's examples, written afresh against fake services, with files under tmp_path:
the quick example (cue.start() ... await cue.stop()), the apple pie factory, the PDF pipeline
and order fulfilment with proof files. Handlers are sync, as in the seed (worker threads)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

DAY = 86_400.0


class Gauge:
    """Counts how many callers are inside at once (thread-safe) and the most ever seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    @contextmanager
    def inside(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


def write_atomically(path: Path, text: str) -> None:
    """Write a file so a concurrent reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


# ---------------------------------------------------------------------------- quick example


def quick_example(images: Path, vision_calls: list[str]) -> runcue.Cue:
    """The seed's quick example: one rate-limited service, one task, both checks."""
    cue = runcue.Cue()
    cue.service("openai", rate="60/min", concurrent=5)

    @cue.task("extract_text", uses="openai")
    def extract_text(work: runcue.WorkUnit) -> dict[str, str]:
        image = Path(work.params["image_path"])
        vision_calls.append(image.name)
        output = image.with_suffix(".txt")
        write_atomically(output, f"words seen in {image.name}")
        return {"output": str(output)}

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "extract_text":
            return Path(work.params["image_path"]).exists()
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        if work.task == "extract_text":
            return not Path(work.params["image_path"]).with_suffix(".txt").exists()
        return True

    return cue


async def test_quick_example_runs_between_start_and_stop(tmp_path: Path) -> None:
    """cue.start(); await cue.submit(...); await cue.stop() runs the work, asyncio or trio."""
    (tmp_path / "page.png").write_bytes(b"png")
    (tmp_path / "done.png").write_bytes(b"png")
    (tmp_path / "done.txt").write_text("already extracted")
    calls: list[str] = []
    cue = quick_example(tmp_path, calls)

    with anyio.fail_after(10):
        cue.start()
        page = await cue.submit("extract_text", params={"image_path": str(tmp_path / "page.png")})
        done = await cue.submit("extract_text", params={"image_path": str(tmp_path / "done.png")})
        assert await cue.wait(page) == {"output": str(tmp_path / "page.txt")}
        assert await cue.wait(done) is None  # skipped: its output is valid
        await cue.stop()
    assert calls == ["page.png"]
    assert (tmp_path / "page.txt").read_text() == "words seen in page.png"
    assert (tmp_path / "done.txt").read_text() == "already extracted"
    with pytest.raises(runcue.CueStateError):
        await cue.submit("extract_text", params={"image_path": str(tmp_path / "page.png")})


async def test_quick_example_stop_lets_running_work_finish(tmp_path: Path) -> None:
    """await cue.stop() is graceful: a handler already running finishes and writes its output."""
    (tmp_path / "page.png").write_bytes(b"png")
    entered, leave = threading.Event(), threading.Event()
    cue = runcue.Cue()
    cue.service("openai", rate="60/min", concurrent=5)

    @cue.task("extract_text", uses="openai")
    def extract_text(work: runcue.WorkUnit) -> str:
        entered.set()
        leave.wait(5)
        write_atomically(tmp_path / "page.txt", "late words")
        return "written"

    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("extract_text", params={"image_path": "page.png"})
        await anyio.to_thread.run_sync(entered.wait, 5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(cue.stop)
            await anyio.wait_all_tasks_blocked()
            leave.set()
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is runcue.WorkState.COMPLETED
    assert work.result == "written"
    assert (tmp_path / "page.txt").read_text() == "late words"


# ---------------------------------------------------------------------------- apple pie


class Kitchen:
    """A fake kitchen: a knife that must not be shared and ovens that bake what they get."""

    def __init__(self) -> None:
        self.knife = Gauge()
        self.ovens = Gauge()
        self._lock = threading.Lock()
        self.log: list[tuple[str, str]] = []

    def cut_apples(self, job_id: str, apple_ids: list[str]) -> list[str]:
        with self.knife.inside():
            time.sleep(0.005)  # long enough that overlapping cuts would be seen
            with self._lock:
                self.log.append(("sliced", job_id))
            return [f"{apple}/{piece}" for apple in apple_ids for piece in range(4)]

    def bake_pie(self, job_id: str, slices: list[str]) -> str:
        with self.ovens.inside():
            time.sleep(0.002)
            with self._lock:
                self.log.append(("baked", job_id))
            return f"pie of {len(slices)} slices"


def bakery(root: Path, kitchen: Kitchen) -> runcue.Cue:
    """The seed's apple pie factory: slice_apples (one knife) -> make_pie (two ovens)."""
    cue = runcue.Cue()
    cue.service("knife", concurrent=1)
    cue.service("oven", concurrent=2)

    def slices_path(job_id: str) -> Path:
        return root / "prep" / job_id / "slices.json"

    def slices_valid(job_id: str) -> bool:
        path = slices_path(job_id)
        if not path.exists():
            return False
        return bool(time.time() - json.loads(path.read_text())["sliced_at"] < DAY)

    @cue.task("slice_apples", uses="knife")
    def slice_apples(work: runcue.WorkUnit) -> dict[str, int]:
        job_id = work.params["job_id"]
        slices = kitchen.cut_apples(job_id, work.params["apple_ids"])
        write_atomically(
            slices_path(job_id), json.dumps({"slices": slices, "sliced_at": time.time()})
        )
        return {"count": len(slices)}

    @cue.task("make_pie", uses="oven")
    def make_pie(work: runcue.WorkUnit) -> dict[str, str]:
        job_id = work.params["job_id"]
        slices = json.loads(slices_path(job_id).read_text())["slices"]
        pie = root / "output" / job_id / "pie.json"
        write_atomically(pie, json.dumps({"pie": kitchen.bake_pie(job_id, slices)}))
        return {"pie": str(pie)}

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "make_pie":
            return slices_valid(work.params["job_id"])
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        if work.task == "slice_apples":
            return not slices_valid(work.params["job_id"])
        return True

    return cue


async def test_apple_pie_slices_one_at_a_time_and_bakes_only_sliced_apples(
    tmp_path: Path,
) -> None:
    """One knife slices serially; each pie waits for its own slices; two ovens at most."""
    kitchen = Kitchen()
    cue = bakery(tmp_path, kitchen)
    jobs = [f"job{n}" for n in range(5)]

    with anyio.fail_after(20):
        async with cue:
            # Pies first: they must wait for slices nobody has cut yet.
            pies = {job: await cue.submit("make_pie", params={"job_id": job}) for job in jobs}
            for job in jobs:
                apples = [f"{job}-apple{n}" for n in range(3)]
                await cue.submit("slice_apples", params={"job_id": job, "apple_ids": apples})
    assert kitchen.knife.peak == 1
    assert kitchen.ovens.peak <= 2
    assert cue.stats().services["knife"].max_running == 1
    for job in jobs:
        assert kitchen.log.index(("sliced", job)) < kitchen.log.index(("baked", job))
        work = await cue.get(pies[job])
        assert work is not None
        assert work.result == {"pie": str(tmp_path / "output" / job / "pie.json")}
        baked = json.loads((tmp_path / "output" / job / "pie.json").read_text())
        assert baked == {"pie": "pie of 12 slices"}


async def test_apple_pie_reslices_stale_slices_and_keeps_fresh_ones(tmp_path: Path) -> None:
    """Fresh slices are reused (slicing skipped); day-old slices are cut again before baking."""
    kitchen = Kitchen()
    for job, age in (("fresh", 60.0), ("old", 2 * DAY)):
        write_atomically(
            tmp_path / "prep" / job / "slices.json",
            json.dumps({"slices": [f"{job}-kept"], "sliced_at": time.time() - age}),
        )
    cue = bakery(tmp_path, kitchen)
    skipped: list[str] = []
    cue.on_skip(lambda work: skipped.append(work.params["job_id"]))

    with anyio.fail_after(20):
        async with cue:
            for job in ("fresh", "old"):
                await cue.submit("make_pie", params={"job_id": job})
                await cue.submit("slice_apples", params={"job_id": job, "apple_ids": ["a", "b"]})
    assert skipped == ["fresh"]
    assert ("sliced", "fresh") not in kitchen.log
    assert kitchen.log.index(("sliced", "old")) < kitchen.log.index(("baked", "old"))
    fresh_pie = json.loads((tmp_path / "output" / "fresh" / "pie.json").read_text())
    old_pie = json.loads((tmp_path / "output" / "old" / "pie.json").read_text())
    assert fresh_pie == {"pie": "pie of 1 slices"}  # baked from the kept slices
    assert old_pie == {"pie": "pie of 8 slices"}  # baked from new slices


# ---------------------------------------------------------------------------- PDF pipeline


class FakePage:
    """One rendered page of a fake PDF."""

    def __init__(self, pdf: str, number: int) -> None:
        self.content = f"{pdf} page {number}"

    def save(self, path: Path) -> None:
        write_atomically(path, self.content)


class FakeTools:
    """pdf_to_images and call_openai_vision, recording what they were asked (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.splits: list[str] = []
        self.vision: list[str] = []
        self.summaries: list[str] = []

    def pdf_to_images(self, pdf_path: str, pages: int) -> list[FakePage]:
        with self._lock:
            self.splits.append(pdf_path)
        return [FakePage(Path(pdf_path).name, n) for n in range(pages)]

    def call_openai_vision(self, page_path: Path) -> str:
        with self._lock:
            self.vision.append(page_path.name)
        return "text of " + page_path.read_text()

    def summarize(self, texts: list[str]) -> str:
        with self._lock:
            self.summaries.append(str(len(texts)))
        return " | ".join(texts)


def pdf_pipeline(root: Path, tools: FakeTools) -> runcue.Cue:
    """The seed's PDF pipeline: split_pdf -> extract_text per page -> summarize."""
    cue = runcue.Cue()
    cue.service("local", concurrent=4)
    cue.service("openai", rate="60/min", concurrent=5)

    def page_path(job_id: str, number: int) -> Path:
        return root / "work" / job_id / "pages" / f"{number:03d}.png"

    @cue.task("split_pdf", uses="local")
    def split_pdf(work: runcue.WorkUnit) -> dict[str, int]:
        pages = tools.pdf_to_images(work.params["pdf_path"], work.params["pages"])
        for number, page in enumerate(pages):
            page.save(page_path(work.params["job_id"], number))
        return {"page_count": len(pages)}

    @cue.task("extract_text", uses="openai")
    def extract_text(work: runcue.WorkUnit) -> dict[str, str]:
        page = Path(work.params["page_path"])
        text = tools.call_openai_vision(page)
        write_atomically(page.with_suffix(".txt"), text)
        return {"text_path": str(page.with_suffix(".txt"))}

    @cue.task("summarize", uses="openai")
    def summarize(work: runcue.WorkUnit) -> str:
        job_id, count = work.params["job_id"], work.params["page_count"]
        texts = [page_path(job_id, n).with_suffix(".txt").read_text() for n in range(count)]
        summary = tools.summarize(texts)
        write_atomically(root / "work" / job_id / "summary.txt", summary)
        return summary

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "extract_text":
            return Path(work.params["page_path"]).exists()
        if work.task == "summarize":
            job_id, count = work.params["job_id"], work.params["page_count"]
            return all(page_path(job_id, n).with_suffix(".txt").exists() for n in range(count))
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        if work.task == "extract_text":
            return not Path(work.params["page_path"]).with_suffix(".txt").exists()
        return True

    return cue


PAGES = 12


async def run_whole_pdf(root: Path, tools: FakeTools) -> runcue.Cue:
    """Submit the whole job, consumers first, and run it to the end."""
    cue = pdf_pipeline(root, tools)
    job = "job1"
    with anyio.fail_after(20):
        async with cue:
            await cue.submit("summarize", params={"job_id": job, "page_count": PAGES})
            for n in range(PAGES):
                page = root / "work" / job / "pages" / f"{n:03d}.png"
                await cue.submit("extract_text", params={"page_path": str(page)})
            await cue.submit(
                "split_pdf", params={"job_id": job, "pdf_path": "report.pdf", "pages": PAGES}
            )
    return cue


async def test_pdf_pipeline_splits_extracts_every_page_then_summarizes(tmp_path: Path) -> None:
    """Extraction waits for the split, the summary for every page's text; each runs once."""
    tools = FakeTools()
    cue = await run_whole_pdf(tmp_path, tools)
    assert tools.splits == ["report.pdf"]
    assert sorted(tools.vision) == [f"{n:03d}.png" for n in range(PAGES)]
    assert tools.summaries == [str(PAGES)]
    summary = (tmp_path / "work" / "job1" / "summary.txt").read_text()
    assert summary == " | ".join(f"text of report.pdf page {n}" for n in range(PAGES))
    stats = cue.stats()
    assert stats.completed == PAGES + 2
    assert stats.services["openai"].max_running <= 5
    assert stats.services["local"].max_running <= 4


async def test_pdf_reprocessing_pages_5_to_10_runs_only_those(tmp_path: Path) -> None:
    """Submitting pages 5-10 again runs just those extractions, at once, without a re-split."""
    tools = FakeTools()
    await run_whole_pdf(tmp_path, tools)
    pages = tmp_path / "work" / "job1" / "pages"
    for n in range(5, 11):
        (pages / f"{n:03d}.txt").unlink()  # say the OCR of these pages was bad
    tools.vision.clear()

    cue = pdf_pipeline(tmp_path, tools)
    with anyio.fail_after(20):
        async with cue:
            for n in range(5, 11):
                await cue.submit("extract_text", params={"page_path": str(pages / f"{n:03d}.png")})
    assert tools.splits == ["report.pdf"]
    assert sorted(tools.vision) == [f"{n:03d}.png" for n in range(5, 11)]
    assert all((pages / f"{n:03d}.txt").exists() for n in range(PAGES))


async def test_pdf_resubmitting_every_page_reruns_only_the_missing_ones(tmp_path: Path) -> None:
    """After a partial loss, resubmitting all pages re-extracts only those without text."""
    tools = FakeTools()
    await run_whole_pdf(tmp_path, tools)
    pages = tmp_path / "work" / "job1" / "pages"
    for n in range(5, 11):
        (pages / f"{n:03d}.txt").unlink()
    tools.vision.clear()

    cue = pdf_pipeline(tmp_path, tools)
    skipped: list[str] = []
    cue.on_skip(lambda work: skipped.append(Path(work.params["page_path"]).name))
    with anyio.fail_after(20):
        async with cue:
            for n in range(PAGES):
                await cue.submit("extract_text", params={"page_path": str(pages / f"{n:03d}.png")})
    assert sorted(tools.vision) == [f"{n:03d}.png" for n in range(5, 11)]
    assert sorted(skipped) == [f"{n:03d}.png" for n in [*range(5), 11]]


# ---------------------------------------------------------------------------- orders


class PaymentAPI:
    """A fake payment provider that records every charge, and can fail chosen orders once."""

    def __init__(self, fail_once: set[str]) -> None:
        self._lock = threading.Lock()
        self.fail_once = set(fail_once)
        self.charges: list[str] = []

    def charge(self, amount: int, idempotency_key: str) -> str:
        with self._lock:
            if idempotency_key in self.fail_once:
                self.fail_once.discard(idempotency_key)
                raise ConnectionError(f"payment gateway timed out for {idempotency_key}")
            self.charges.append(idempotency_key)
            return f"tx-{idempotency_key}-{amount}"


class EmailAPI:
    """A fake mailer that records every e-mail sent, and can fail chosen addresses once."""

    def __init__(self, fail_once: set[str]) -> None:
        self._lock = threading.Lock()
        self.fail_once = set(fail_once)
        self.sent: list[str] = []

    def send(self, to: str, template: str) -> None:
        with self._lock:
            if to in self.fail_once:
                self.fail_once.discard(to)
                raise ConnectionError(f"mail server refused {to}")
            self.sent.append(to)


def fulfilment(root: Path, payments: PaymentAPI, mailer: EmailAPI) -> runcue.Cue:
    """The seed's order fulfilment: charge_payment -> send_confirmation, each with a proof."""
    cue = runcue.Cue()
    cue.service("payment", rate="100/min")
    cue.service("email", rate="50/min")

    def proof(order_id: str, name: str) -> Path:
        return root / "orders" / order_id / name

    @cue.task("charge_payment", uses="payment")
    def charge_payment(work: runcue.WorkUnit) -> dict[str, Any]:
        order_id = work.params["order_id"]
        path = proof(order_id, "payment.json")
        if path.exists():  # idempotent even if asked twice
            return dict(json.loads(path.read_text()))
        transaction = payments.charge(work.params["amount"], idempotency_key=order_id)
        record = {"charged_at": time.time(), "transaction_id": transaction}
        write_atomically(path, json.dumps(record))
        return {"transaction_id": transaction}

    @cue.task("send_confirmation", uses="email")
    def send_confirmation(work: runcue.WorkUnit) -> dict[str, Any]:
        order_id = work.params["order_id"]
        path = proof(order_id, "email_sent.json")
        if path.exists():
            return dict(json.loads(path.read_text()))
        mailer.send(work.params["email"], template="shipped")
        write_atomically(path, json.dumps({"sent_at": time.time()}))
        return {"sent": True}

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "send_confirmation":
            return proof(work.params["order_id"], "payment.json").exists()
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        order_id = work.params["order_id"]
        if work.task == "charge_payment":
            return not proof(order_id, "payment.json").exists()
        if work.task == "send_confirmation":
            return not proof(order_id, "email_sent.json").exists()
        return True

    return cue


ORDERS = [f"order{n}" for n in range(6)]


async def submit_every_order(cue: runcue.Cue) -> dict[tuple[str, str], str]:
    """Submit both steps of every order, confirmations first; returns their ids."""
    ids: dict[tuple[str, str], str] = {}
    for order in ORDERS:
        ids["send_confirmation", order] = await cue.submit(
            "send_confirmation", params={"order_id": order, "email": f"{order}@example.com"}
        )
        ids["charge_payment", order] = await cue.submit(
            "charge_payment", params={"order_id": order, "amount": 100}
        )
    return ids


async def test_orders_resubmitted_to_a_new_cue_charge_and_mail_nobody_twice(
    tmp_path: Path,
) -> None:
    """Resubmitting everything to a new cue after failures charges and mails each order once."""
    payments = PaymentAPI(fail_once={"order4"})
    mailer = EmailAPI(fail_once={"order2@example.com"})

    first = fulfilment(tmp_path, payments, mailer)
    with anyio.fail_after(20):
        async with first:
            ids = await submit_every_order(first)
            for (task, order), work_id in ids.items():
                if (task, order) == ("send_confirmation", "order4"):
                    continue  # can never be ready: its payment failed
                try:
                    await first.wait(work_id)
                except ConnectionError:
                    assert order in ("order2", "order4")
            waiting = await first.get(ids["send_confirmation", "order4"])
            assert waiting is not None
            assert waiting.state is runcue.WorkState.PENDING
            await first.stop()  # the batch ends; the waiting confirmation is dropped
    assert sorted(payments.charges) == [o for o in ORDERS if o != "order4"]
    assert sorted(mailer.sent) == [
        f"{o}@example.com" for o in ORDERS if o not in ("order2", "order4")
    ]

    second = fulfilment(tmp_path, payments, mailer)
    skipped: list[tuple[str, str]] = []
    second.on_skip(lambda work: skipped.append((work.task, work.params["order_id"])))
    with anyio.fail_after(20):
        async with second:
            await submit_every_order(second)
    assert sorted(payments.charges) == ORDERS  # everyone charged, exactly once
    assert sorted(mailer.sent) == [f"{o}@example.com" for o in ORDERS]  # mailed exactly once
    assert len(skipped) == 2 * len(ORDERS) - 3  # all but order4's charge, order2/4's mail
    assert ("charge_payment", "order4") not in skipped
    assert ("send_confirmation", "order2") not in skipped
    stats = second.stats()
    assert (stats.failed, stats.completed, stats.skipped) == (0, 3, 9)


async def test_orders_a_third_run_does_nothing_at_all(tmp_path: Path) -> None:
    """Once every proof exists, a resubmission skips everything and calls no API."""
    payments, mailer = PaymentAPI(set()), EmailAPI(set())
    for _ in range(3):
        cue = fulfilment(tmp_path, payments, mailer)
        with anyio.fail_after(20):
            async with cue:
                await submit_every_order(cue)
    assert sorted(payments.charges) == ORDERS
    assert sorted(mailer.sent) == [f"{o}@example.com" for o in ORDERS]
    assert cue.stats().skipped == 2 * len(ORDERS)
