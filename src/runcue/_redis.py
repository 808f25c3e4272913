"""RedisStore: the limits of shared services and the claims on keyed work, kept in Redis.

Every decision is one Lua script run atomically by the server, on the server's clock
(``redis.call('TIME')``), so the clocks of the hosts never matter. Per service::

    {namespace}:svc:{service}:rate:{period µs}  sorted set: a member per start, score = its time
    {namespace}:svc:{service}:leases            sorted set: a member per lease, score = expiry
    {namespace}:svc:{service}:pause             string: paused until (µs)
    {namespace}:svc:{service}:epoch             string: "<born µs>:<token>", see "Restarts"
    {namespace}:svc:{service}:fence             string: the last lease's fencing token
    {namespace}:svc:{service}:costs             sorted set: a member per start counted in the
                                                cost windows (its lease), score = its time
    {namespace}:svc:{service}:costs:amounts     hash: lease -> "dim=amount,..." (the estimate
                                                of every dimension, or the actual once settled)
    {namespace}:svc:{service}:costs:sums        hash: "at" -> when the sums were last brought
                                                up to date (µs); "{dim}:{period µs}" -> the
                                                amount of dim recorded in the window ending then

and for claims ``{namespace}:claim:{key}`` ("<owner>#<fencing token>", with a TTL) plus
``{namespace}:claims:epoch``, ``{namespace}:claims:pause`` and ``{namespace}:claims:fence``.
A fencing token is the larger of the last one plus one and the server's time in µs, so it
grows across a restart that lost the counter, and its key may expire (a moment after the
holding it was made for could have).
Every key carries an expiry a little longer than the longest time it matters, so an abandoned
namespace leaves nothing behind.
Times are whole microseconds (exact in a double until the year 2255).

**Admission** (:meth:`RedisStore.acquire`): drop the starts that left each window and the leases
that expired, then admit only when the service is not paused, every window holds fewer than its
limit and fewer than ``concurrent`` leases are live; an admitted start is added to every window
(and its lease to the lease set) in the same script, so at most N starts fall in any window of
``period`` seconds, across every process, exactly. A refusal returns how long to wait: until
the pause ends, or the start that must leave the fullest window leaves it, or -- when only
leases are missing -- a short poll (``poll_interval``), since a lease given back by another
process frees its slot long before it would expire.

**Cost windows** (``acquire(costs=...)``, :meth:`RedisStore.settle`): amounts such as tokens,
in windows like ``"90000/min;2000000/day"``, with the semantics of the in-process ones
(``_costs.py``). Admission is the same script, all or none with the windows and the lease:
for every cost window in which the work's estimate ``e`` is above 0, the amounts recorded in
``(now - period, now]`` (each start's estimate until it is settled, its actual after) plus
``e`` must stay within the limit; a dimension estimated at 0 holds nothing back. An admitted
start is recorded once for all the windows of the service -- its lease in ``costs`` at the
server's time, its amounts in every dimension (also 0, so that a settlement can still
charge it) in ``costs:amounts`` -- and added to every window's sum. :meth:`RedisStore.settle`
replaces the amounts at the original time and moves the sums of the windows that still count
the start by the difference: a refund frees room at once, an actual above the estimate is
*debt*: the window may then hold more than its limit until that start leaves it, and no
start needing room there is admitted meanwhile. Nothing is forgiven.

Each window keeps a running sum, so a script never adds up a window: it subtracts the records
that left each window since ``at`` (every record leaves every window once), forgets those older
than the longest window, and compares sum plus estimate with the limit -- O(windows + records
that left) per call, O(1) amortized per start. Only a refusal by a cost window walks that
window's records from the oldest until enough would have left for the estimate to fit: the
wait it returns is exact for what is recorded then (what changes after -- other starts, a
refund, a charge -- can move it either way; the caller just asks again).
A window first asked for (a new ``costs=``) is summed from the records once; one that a
process no longer declares is still kept up to date for the others. Memory: one sorted-set
member and one hash field per start of the longest cost window (a day-long window of 100,000
starts holds 100,000 of each: about 200 bytes per start with 20-character lease names, B10).
The records' clock is the server's, never going back; a start counts from its grant, which
precedes the handler's start by the dispatch delay (as for rate windows). If no actual exceeds
its estimate, no window of ``period`` seconds ever records more than the limit, across every
process, exactly. An estimate above a window's limit could never fit: :meth:`acquire` raises
:class:`CostTooLargeError` without asking the server.

**Restarts**: a Redis server restarted without persistence comes back empty: the recent
starts and the live leases are gone, and admitting at once could break both limits. Each
process remembers the *epoch* token of every service it used recently; when the script finds
the epoch missing (or replaced) while the caller knew it, the state was lost, and the service
is paused for ``max(longest window, lease TTL)`` from the moment the loss was first seen:
long enough for every earlier start to have left its window and for every process still
running a handler to re-register its lease at its next renewal (:meth:`RedisStore.renew`
re-creates the leases it is asked to renew when it finds the state lost). The longest window
includes the cost windows: the recorded amounts are gone, so nothing starts until every
amount recorded before the loss would have left its window; settling a start that was lost
changes nothing. Claims follow the same rule with their TTL. A long window means a long pause
(a day for ``"1000/day"`` or ``"2000000/day"`` tokens), and a process that first connects
after a restart, before any earlier process noticed it, cannot know about the loss: run Redis
with ``appendonly yes`` where either matters.

**When Redis cannot be reached** every method raises (after about ``timeout``): the cue
starts nothing of a shared service (it fails closed) and asks again with backoff. A
settlement that fails is retried by the cue -- it is safe to repeat -- until it lands or its
start has left every cost window (then it could change nothing and is dropped, with a
warning). Until it lands the start counts at its estimate: a refund comes late (the budget is
under-used, never over), and a charge above the estimate is not seen yet, so the windows can
hold up to that excess more than their limit meanwhile.

The client is redis-py's synchronous client, each call run in a worker thread through
:func:`anyio.to_thread.run_sync` (with its own :class:`anyio.CapacityLimiter`): it works the same
on asyncio and trio, and a Redis round trip on loopback costs far less than a millisecond.
``redis`` is an optional dependency (``pip install 'runcue[redis]'``); this module imports it
only when a :class:`RedisStore` is created.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._costs import check_amount
from ._errors import CostTooLargeError
from ._redis_scripts import (
    ACQUIRE,
    CLAIM,
    PAUSE,
    RELEASE_CLAIM,
    RENEW,
    RENEW_CLAIMS,
    SETTLE,
)
from ._store import Grant

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from ._rate import RateSpec

__all__ = ["RedisStore"]

logger = logging.getLogger("runcue")

T = TypeVar("T")

_INSTALL_HINT = "RedisStore needs the redis client library: pip install 'runcue[redis]'"

# How long an epoch key outlives the longest time it protects (ms), and the margin a process
# keeps before it trusts that an epoch it knows should still exist (s).
_EPOCH_EXTRA_MS = 60_000
_EPOCH_TRUST_MARGIN = 30.0


def _micros(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1_000_000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _packed(amounts: Mapping[str, float]) -> str:
    """Amounts as the scripts store them: ``"dim=amount,..."`` (exact: ``repr`` of a float)."""
    return ",".join(f"{dimension}={float(amount)!r}" for dimension, amount in amounts.items())


def _amount(dimension: object, amount: object, what: str) -> float:
    """A dimension and its amount, validated (the scripts rely on identifiers)."""
    if not isinstance(dimension, str) or not dimension.isidentifier():
        msg = f"a cost dimension must be an identifier such as 'tokens', got {dimension!r}"
        raise ValueError(msg)
    return check_amount(amount, f"{what} {dimension!r}")


def _estimates(costs: Sequence[tuple[str, RateSpec, float]]) -> dict[str, float]:
    """Each dimension's estimate, checked against every window of it.

    :raises CostTooLargeError: an estimate above a window's limit (it could never fit).
    :raises ValueError: a bad dimension or amount, or two estimates for one dimension.
    """
    estimates: dict[str, float] = {}
    for dimension, spec, estimate in costs:
        amount = _amount(dimension, estimate, "the estimate of")
        if estimates.setdefault(dimension, amount) != amount:
            msg = (
                f"two estimates for cost {dimension!r} ({estimates[dimension]!r} and "
                f"{amount!r}): pass the same estimate with every window of a dimension"
            )
            raise ValueError(msg)
        if amount > spec.limit:
            msg = (
                f"an estimate of {amount:g} {dimension} can never fit the window "
                f"{spec.limit}/{spec.period:g}s: at most {spec.limit} {dimension} in any "
                f"{spec.period:g}s"
            )
            raise CostTooLargeError(msg)
    return estimates


class _Epoch:
    """What this process knows of one epoch key: the token and when it last saw it."""

    __slots__ = ("changed_at", "keep", "previous", "seen_at", "token")

    def __init__(self) -> None:
        self.token = ""
        self.seen_at = -math.inf
        self.keep = 0.0
        # The token before the last change, and when the change was seen: a renewal sends it
        # for a while, so that leases (or claims) lost in a restart are re-created even when
        # another call of this process saw the loss first and learned the new token.
        self.previous = ""
        self.changed_at = -math.inf

    def known(self) -> str:
        """The token, while recent enough that its key must still exist unless Redis lost it."""
        if time.monotonic() - self.seen_at < self.keep - _EPOCH_TRUST_MARGIN:
            return self.token
        return ""

    def saw(self, token: str, sent_at: float, keep: float) -> None:
        if self.token and token != self.token:
            self.previous = self.token
            self.changed_at = time.monotonic()
        self.token = token
        self.seen_at = sent_at
        self.keep = keep

    def for_renewal(self, grace: float) -> str:
        """What a renewal sends as known: the token before a change seen less than ``grace``
        ago (the server re-creates holdings only while the loss is that recent), else
        :meth:`known`."""
        if self.previous and time.monotonic() - self.changed_at < grace:
            return self.previous
        return self.known()


class RedisStore:
    """Keeps the limits of ``shared=True`` services and the claims on keyed work in Redis.

    ``runcue.Cue(store=runcue.RedisStore("redis://host:6379/0", namespace="myjob"))``: every
    process whose store points at the same server and namespace shares one budget per service
    name. See the module documentation for the keys, the scripts and what a restart does.

    :param url: a redis-py URL (``redis://``, ``rediss://``, ``unix://``); ignored when
        ``client`` is given.
    :param namespace: the prefix of every key; different jobs on one server use different
        namespaces.
    :param client: a ready ``redis.Redis`` to use instead (the store then never closes it).
    :param timeout: seconds to connect and to wait for each reply; an unreachable server
        makes a call raise after about this long (the cue then fails closed).
    :param poll_interval: the longest wait returned when only leases are missing (another
        process may give one back at any moment).
    :param max_threads: worker threads for Redis calls.
    :raises ImportError: when the ``redis`` package is not installed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "runcue",
        client: redis.Redis | None = None,
        timeout: float = 2.0,
        poll_interval: float = 0.025,
        max_threads: int = 8,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            msg = f"namespace must be a non-empty string, got {namespace!r}"
            raise ValueError(msg)
        for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                msg = f"{name} must be a number of seconds > 0, got {value!r}"
                raise ValueError(msg)
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            msg = f"max_threads must be a whole number >= 1, got {max_threads!r}"
            raise ValueError(msg)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._owns_client = client is None
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One immediate retry: a pooled connection that died with a restarted server.
                retry=Retry(NoBackoff(), 1),
                max_connections=max_threads + 2,
            )
            self._where = url.split("@")[-1]  # never show a password
        else:
            self._where = repr(client)
        self._client = client
        self.namespace = namespace
        self.poll_interval = float(poll_interval)
        self._max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None
        self._limiter_loop: object = None
        self._closed = False
        self._acquire: Script = client.register_script(ACQUIRE)
        self._settle: Script = client.register_script(SETTLE)
        self._renew: Script = client.register_script(RENEW)
        self._pause: Script = client.register_script(PAUSE)
        self._claim: Script = client.register_script(CLAIM)
        self._renew_claims: Script = client.register_script(RENEW_CLAIMS)
        self._release_claim: Script = client.register_script(RELEASE_CLAIM)
        self._tokens = os.urandom(6).hex()
        self._counter = 0
        self._lock = threading.Lock()  # guards the bookkeeping below (touched from threads)
        self._epochs: dict[str, _Epoch] = {}  # service name (or "" for claims) -> epoch
        self._graces: dict[str, float] = {}  # service -> seconds to pause after a loss

    def __repr__(self) -> str:
        return f"<runcue.RedisStore {self._where} namespace={self.namespace!r}>"

    # ------------------------------------------------------------------ plumbing

    def _key(self, service: str, part: str) -> str:
        return f"{self.namespace}:svc:{service}:{part}"

    def _cost_keys(self, service: str) -> list[str]:
        return [
            self._key(service, "costs"),
            self._key(service, "costs:amounts"),
            self._key(service, "costs:sums"),
        ]

    def _new_token(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self._tokens}-{self._counter}"

    def _epoch(self, name: str) -> _Epoch:
        with self._lock:
            epoch = self._epochs.get(name)
            if epoch is None:
                epoch = self._epochs[name] = _Epoch()
            return epoch

    def _epoch_args(
        self, name: str, grace: float, *, renewing: bool = False
    ) -> tuple[_Epoch, list[str | int]]:
        """The four prelude arguments: known epoch, a fresh token, grace (µs), key life (ms).
        ``renewing``: a renewal, which must learn of a recent loss even when another call
        of this process saw it first (see :meth:`_Epoch.for_renewal`)."""
        epoch = self._epoch(name)
        keep_ms = math.ceil(grace * 1000) + _EPOCH_EXTRA_MS
        with self._lock:
            known = epoch.for_renewal(grace) if renewing else epoch.known()
        return epoch, [known, self._new_token(), _micros(grace), keep_ms]

    def _saw(self, epoch: _Epoch, token: Any, sent_at: float, grace: float) -> None:
        with self._lock:
            epoch.saw(_text(token), sent_at, grace + _EPOCH_EXTRA_MS / 1000)

    async def _call(self, func: Callable[[], T]) -> T:
        """Run a blocking Redis call in a worker thread of this store's own limiter."""
        if self._closed:
            msg = f"{self!r} is closed"
            raise RuntimeError(msg)
        loop = anyio.lowlevel.current_token().native_token
        if self._limiter is None or self._limiter_loop is not loop:
            self._limiter = anyio.CapacityLimiter(self._max_threads)
            self._limiter_loop = loop
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)

    # ------------------------------------------------------------------ limits

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
        costs: Sequence[tuple[str, RateSpec, float]] = (),
    ) -> float:
        """Take one start of ``service`` if the pause, every rate window, the leases and every
        cost window allow it.

        Returns 0.0 when granted (the start is in every window and, with ``concurrent``,
        ``lease`` is held for ``ttl`` seconds: then a :class:`Grant` carrying the lease's
        fencing token; with ``costs``, the estimates are recorded under ``lease`` until
        :meth:`settle`); otherwise changes nothing and returns the seconds to wait before
        asking again.

        ``costs``: ``(dimension, window, estimate)`` for every cost window of the service.
        For each window whose estimate is above 0, the amounts recorded in the last
        ``window.period`` seconds plus the estimate must stay within ``window.limit``.

        :raises CostTooLargeError: an estimate above its window's limit (it could never fit;
            the cue refuses such work at ``submit()``).
        :raises ValueError: a bad dimension or estimate, or a ``lease`` already counted in
            the cost windows (every acquire needs a new lease name).
        """
        estimates = _estimates(costs)
        longest = max((spec.period for spec in windows), default=0.0)
        longest = max((spec.period for _, spec, _ in costs), default=longest)
        grace = max(longest, ttl)
        with self._lock:
            self._graces[service] = max(grace, self._graces.get(service, 0.0))
            grace = self._graces[service]
        epoch, args = self._epoch_args(service, grace)
        keys = [
            self._key(service, "epoch"),
            self._key(service, "pause"),
            self._key(service, "leases"),
            self._key(service, "fence"),
            *self._cost_keys(service),
        ]
        args += [concurrent or 0, lease, _micros(ttl), f"{lease}/{self._new_token()}"]
        args += [_micros(self.poll_interval), _packed(estimates), len(costs)]
        for spec in windows:
            period = _micros(spec.period)
            keys.append(self._key(service, f"rate:{period}"))
            args += [period, spec.limit]
        for dimension, spec, _ in costs:
            args += [dimension, _micros(spec.period), spec.limit]
        sent_at = time.monotonic()
        reply = await self._call(functools.partial(self._acquire, keys, args))
        self._saw(epoch, reply[1], sent_at, grace)
        status = _text(reply[0])
        if status == "reused":
            msg = (
                f"lease {lease!r} is counted in the cost windows of {service!r} already:"
                " every acquire needs a new lease name"
            )
            raise ValueError(msg)
        wait = int(status) / 1_000_000
        if wait > 0:
            return wait
        fence = _text(reply[2]) if len(reply) > 2 else ""
        return Grant(int(fence)) if fence else 0.0

    async def settle(self, service: str, lease: str, actual: Mapping[str, float]) -> None:
        """Replace the amounts recorded for ``lease``'s start by ``actual`` (a dimension not
        in it keeps its estimate), at the start's original time: a refund frees room at once,
        a charge above the estimate is debt that later admissions wait for.

        Safe to repeat (the same ``actual`` again changes nothing); a lease whose start has
        left every cost window, or that the store never recorded (or lost in a restart), is
        ignored.
        """
        amounts = {dim: _amount(dim, amount, "the actual") for dim, amount in actual.items()}
        if not amounts:
            return
        keys = self._cost_keys(service)
        await self._call(functools.partial(self._settle, keys, [lease, _packed(amounts)]))

    async def renew(self, service: str, leases: list[str], ttl: float) -> list[str]:
        """Extend these leases of ``service`` to ``ttl`` seconds from now; returns the leases
        that had expired (the cue then cancels their handlers).

        A lease that already expired is not brought back (its slot may be taken): it is
        logged. After Redis lost its state (a restart), the leases are re-created: the
        service is paused for every process until its holders had time to do so.
        """
        if not leases:
            return []
        with self._lock:
            grace = self._graces.get(service, ttl)
        epoch, args = self._epoch_args(service, grace, renewing=True)
        keys = [
            self._key(service, "epoch"),
            self._key(service, "pause"),
            self._key(service, "leases"),
        ]
        args += [_micros(ttl), *leases]
        sent_at = time.monotonic()
        reply = await self._call(functools.partial(self._renew, keys, args))
        self._saw(epoch, reply[0], sent_at, grace)
        lost: list[str] = []
        if len(reply) - 1 < len(leases):
            renewed = {_text(item) for item in reply[1:]}
            lost = [lease for lease in leases if lease not in renewed]
            logger.warning(
                "runcue: %d lease(s) of shared service %r had expired before renewal, so"
                " other processes may hold their slots: %s",
                len(lost),
                service,
                ", ".join(lost[:5]),
            )
        return lost

    async def release(self, service: str, lease: str) -> None:
        """Give a lease back (the handler finished)."""
        key = self._key(service, "leases")
        await self._call(functools.partial(self._client.zrem, key, lease))

    async def pause(self, service: str, seconds: float) -> None:
        """Start nothing of ``service`` anywhere for ``seconds`` (never shortens a pause)."""
        if not seconds > 0:
            return
        with self._lock:
            grace = self._graces.get(service, 0.0)
        epoch, args = self._epoch_args(service, grace)
        keys = [self._key(service, "epoch"), self._key(service, "pause")]
        args.append(_micros(seconds))
        sent_at = time.monotonic()
        token = await self._call(functools.partial(self._pause, keys, args))
        self._saw(epoch, token, sent_at, grace)

    # ------------------------------------------------------------------ claims

    def _claim_keys(self) -> list[str]:
        return [
            f"{self.namespace}:claims:epoch",
            f"{self.namespace}:claims:pause",
            f"{self.namespace}:claims:fence",
        ]

    async def claim(self, key: str, owner: str, ttl: float) -> int:
        """Claim keyed work for ``owner`` for ``ttl`` seconds: the claim's fencing token (an
        int >= 1) if ``owner`` holds it now, else 0."""
        epoch, args = self._epoch_args("", ttl)
        keys = [*self._claim_keys(), f"{self.namespace}:claim:{key}"]
        args += [owner, max(1, math.ceil(ttl * 1000))]
        sent_at = time.monotonic()
        held, token = await self._call(functools.partial(self._claim, keys, args))
        self._saw(epoch, token, sent_at, ttl)
        return int(_text(held))

    async def renew_claims(self, keys: list[str], owner: str, ttl: float) -> list[str]:
        """Extend the claims ``owner`` holds on ``keys`` (re-created if Redis lost them);
        returns the keys it no longer held."""
        if not keys:
            return []
        epoch, args = self._epoch_args("", ttl, renewing=True)
        names = [*self._claim_keys(), *(f"{self.namespace}:claim:{key}" for key in keys)]
        args += [owner, max(1, math.ceil(ttl * 1000))]
        sent_at = time.monotonic()
        reply = await self._call(functools.partial(self._renew_claims, names, args))
        self._saw(epoch, reply[0], sent_at, ttl)
        lost = [key for key, held in zip(keys, reply[1:]) if not held]
        if lost:
            logger.warning(
                "runcue: %d claim(s) of %r had expired before renewal and may be held"
                " elsewhere: %s",
                len(lost),
                owner,
                ", ".join(lost[:5]),
            )
        return lost

    async def release_claim(self, key: str, owner: str) -> None:
        """Give up a claim (the work finished); only the holder's claim is removed."""
        name = f"{self.namespace}:claim:{key}"
        await self._call(functools.partial(self._release_claim, [name], [owner]))

    async def aclose(self) -> None:
        """Close the connections this store opened (a ``client`` passed in stays open)."""
        if self._closed:
            return
        if self._owns_client:
            await self._call(self._client.close)
        self._closed = True
