"""Order fulfilment, callback style: charge, ship, confirm -- and never charge anyone twice.

Each order goes through three side effects: charge the card (a payment service, 100/min), ship
the parcel (a warehouse that packs two at a time) and e-mail the customer (50/min). A side
effect leaves nothing on disk by itself, so each handler writes a *proof* file as soon as it
has acted, and the program's checks read the proofs: shipping waits for the payment proof, the
e-mail for the shipment proof, and any step whose proof is on file is skipped.

The first run meets a mail outage: every confirmation fails (after a retry). Then the program
"restarts": a new Cue, and every step of every order submitted again. Payments and shipments
are skipped on their proofs and only the e-mails go out. The fake payment provider counts its
charges to show that nobody paid twice.

The providers are fakes and the proofs live in a temporary folder. The same shop with declared
inputs and outputs is ``orders_declared.py``.

Run:  python examples/orders.py            (asyncio)
      python examples/orders.py trio       (trio)
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import anyio

import runcue

ORDERS = {"A-1001": 25.0, "A-1002": 12.5, "A-1003": 99.0, "A-1004": 7.25}
STEPS = ("charge_payment", "ship_order", "send_confirmation")


class Providers:
    """The outside world, faked: a card processor, a warehouse and a mail server."""

    def __init__(self) -> None:
        self.charges: Counter[str] = Counter()
        self.mails: Counter[str] = Counter()
        self.mail_down = False
        self._lock = threading.Lock()  # sync handlers run in worker threads

    def charge(self, order: str, amount: float) -> str:
        time.sleep(0.02)
        with self._lock:
            self.charges[order] += 1
            return f"txn-{order}-{self.charges[order]}"

    def ship(self, order: str) -> str:
        time.sleep(0.05)
        return f"TRACK-{order}"

    def mail(self, order: str, tracking: str) -> None:
        time.sleep(0.01)
        if self.mail_down:
            raise ConnectionError("mail server unreachable")
        with self._lock:
            self.mails[order] += 1


def save(path: Path, data: object) -> None:
    """Write a proof all at once, so a check never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with runcue.atomic_write(path) as handle:
        json.dump(data, handle)


def build_cue(root: Path, world: Providers) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=30)
    cue.service("payment", rate="100/min")
    cue.service("warehouse", concurrent=2)
    cue.service("email", rate="50/min")

    def proof(work: runcue.WorkUnit, kind: str) -> Path:
        return root / "orders" / str(work.params["order"]) / f"{kind}.json"

    @cue.task("charge_payment", uses="payment")
    def charge_payment(work: runcue.WorkUnit) -> str:
        transaction = world.charge(work.params["order"], work.params["amount"])
        save(proof(work, "payment"), {"transaction": transaction, "at": time.time()})
        return transaction

    @cue.task("ship_order", uses="warehouse")
    def ship_order(work: runcue.WorkUnit) -> str:
        tracking = world.ship(work.params["order"])
        save(proof(work, "shipment"), {"tracking": tracking, "at": time.time()})
        return tracking

    @cue.task("send_confirmation", uses="email", retry=2, backoff=0.05)
    def send_confirmation(work: runcue.WorkUnit) -> str:
        tracking = json.loads(proof(work, "shipment").read_text())["tracking"]
        world.mail(work.params["order"], tracking)
        save(proof(work, "email"), {"tracking": tracking, "at": time.time()})
        return "sent"

    waits_for = {"ship_order": "payment", "send_confirmation": "shipment"}
    proves = {"charge_payment": "payment", "ship_order": "shipment", "send_confirmation": "email"}

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        needed = waits_for.get(work.task)
        return needed is None or proof(work, needed).exists()

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not proof(work, proves[work.task]).exists()

    @cue.on_complete
    def done(work: runcue.WorkUnit, result: object, duration: float) -> None:
        print(f"  {work.params['order']}  {work.task:<17} done: {result}")

    @cue.on_skip
    def skipped(work: runcue.WorkUnit) -> None:
        print(f"  {work.params['order']}  {work.task:<17} skipped: proof on file")

    @cue.on_failure
    def failed(work: runcue.WorkUnit, error: BaseException) -> None:
        print(f"  {work.params['order']}  {work.task:<17} FAILED after {work.attempt}: {error}")

    return cue


async def fulfil(root: Path, world: Providers, label: str) -> runcue.CueStats:
    print(label)
    async with build_cue(root, world) as cue:
        for order, amount in ORDERS.items():
            for step in STEPS:
                await cue.submit(step, {"order": order, "amount": amount})
    return cue.stats()


async def main() -> None:
    world = Providers()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        world.mail_down = True
        first = await fulfil(root, world, "first run (the mail server is down):")
        world.mail_down = False
        second = await fulfil(root, world, "after a restart (a new Cue, everything resubmitted):")
    twice = sorted(order for order, count in world.charges.items() if count > 1)
    print(f"first run: {first.completed} done, {first.failed} failed")
    print(f"second run: {second.completed} done, {second.skipped} skipped")
    print(
        f"payment provider: {world.charges.total()} charges for {len(ORDERS)} orders;"
        f" charged twice: {', '.join(twice) or 'nobody'};"
        f" confirmations sent: {world.mails.total()}"
    )
    if twice or set(world.charges) != set(ORDERS) or set(world.mails) != set(ORDERS):
        raise SystemExit("something was charged twice, or not at all")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
