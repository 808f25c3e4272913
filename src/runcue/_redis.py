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

# Shared by every script: the server's time in whole microseconds, and the epoch check.
# KEYS[1] epoch key, KEYS[2] pause key; ARGV[1] known epoch ('' = none), ARGV[2] a new token,
# ARGV[3] grace (µs) to pause for when the state was lost, ARGV[4] epoch key lifetime (ms).
# Sets `now`, `epoch` and `lost`.
_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function fmt(x) return string.format('%.0f', x) end
local function keep_at_least(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, fmt(ms)) end
end
local function next_fence(key, keep_ms)
  local last = tonumber(redis.call('GET', key) or '0')
  local token = math.max(last + 1, now)
  redis.call('SET', key, fmt(token), 'PX', fmt(keep_ms))
  return fmt(token)
end
local function owner_of(value)
  if not value then return nil end
  return string.match(value, '^(.*)#%d+$') or value
end
local function pause_until(key, when)
  if when <= now then return end
  local current = tonumber(redis.call('GET', key) or '0')
  if when > current then
    redis.call('SET', key, fmt(when), 'PX', fmt(math.ceil((when - now) / 1000) + 1000))
  end
end
local known, epoch, lost = ARGV[1], redis.call('GET', KEYS[1]), false
local born = now
if not epoch then
  epoch = fmt(now) .. ':' .. ARGV[2]
  redis.call('SET', KEYS[1], epoch)
  lost = known ~= ''
else
  born = tonumber(string.match(epoch, '^(%d+):')) or now
  lost = known ~= '' and known ~= epoch
end
if lost then pause_until(KEYS[2], born + tonumber(ARGV[3])) end
keep_at_least(KEYS[1], tonumber(ARGV[4]))
"""

# Shared by the scripts that read the cost windows. A start's amounts are packed as
# "dim=amount,dim=amount" (dimensions are identifiers; amounts written with 17 significant
# digits, so a double comes back exactly). The sums hash holds "at" (when the sums were last
# brought up to date, µs) and, per window, "{dim}:{period µs}" -> the amount of `dim` recorded
# in the window ending at "at".
_COST_FUNCTIONS = """
local function amount_text(x) return string.format('%.17g', x) end
local function parse_amounts(packed)
  local amounts, dims = {}, {}
  if packed then
    for dim, amount in string.gmatch(packed, '([^=,]+)=([^,]+)') do
      if amounts[dim] == nil then dims[#dims + 1] = dim end
      amounts[dim] = tonumber(amount)
    end
  end
  return amounts, dims
end
local function window_of(field)
  local dim, period = string.match(field, '^(.+):(%d+)$')
  return dim, tonumber(period)
end
local function read_sums(key)
  local state = redis.call('HGETALL', key)
  local at, sums, fields = nil, {}, {}
  for i = 1, #state, 2 do
    if state[i] == 'at' then
      at = tonumber(state[i + 1])
    else
      sums[state[i]] = tonumber(state[i + 1])
      fields[#fields + 1] = state[i]
    end
  end
  return at, sums, fields
end
"""

# KEYS: epoch, pause, leases, fence, costs, costs:amounts, costs:sums, then one sorted set per
# rate window. ARGV[5] concurrent (0 = none), ARGV[6] lease, ARGV[7] lease TTL (µs), ARGV[8]
# start member, ARGV[9] longest wait (µs) when only leases are missing, ARGV[10] the estimate
# packed ('' without cost windows), ARGV[11] how many cost windows, then (period µs, limit)
# per rate window, then (dimension, period µs, limit) per cost window.
# Returns {0, epoch, fencing token ('' without a lease)} when admitted, else {µs to wait,
# epoch}; {'reused', epoch} when the lease is in the cost windows already (nothing changed).
_ACQUIRE = (
    _PRELUDE
    + _COST_FUNCTIONS
    + """
local wait = 0
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then wait = paused - now end
local concurrent = tonumber(ARGV[5])
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
  if redis.call('ZCARD', KEYS[3]) >= concurrent then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local w = math.min(tonumber(first[2]) - now, tonumber(ARGV[9]))
    if w > wait then wait = w end
  end
end
local rates = #KEYS - 7
for i = 1, rates do
  local period = tonumber(ARGV[10 + i * 2])
  local limit = tonumber(ARGV[11 + i * 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[7 + i], '-inf', fmt(now - period))
  local used = redis.call('ZCARD', KEYS[7 + i])
  if used >= limit then
    local leaving = redis.call('ZRANGE', KEYS[7 + i], used - limit, used - limit, 'WITHSCORES')
    local w = tonumber(leaving[2]) + period - now
    if w > wait then wait = w end
  end
end

-- Cost windows: the records (lease -> time, amounts) and a running sum per window.
local costs, amounts_key, sums_key = KEYS[5], KEYS[6], KEYS[7]
local ncost = tonumber(ARGV[11])
local first = 12 + rates * 2
local cnow, keep, estimate, sums, fields = now, 0, {}, {}, {}
local function save_costs()
  local state = {'at', fmt(cnow)}
  for _, field in ipairs(fields) do
    state[#state + 1] = field
    state[#state + 1] = amount_text(sums[field])
  end
  redis.call('HSET', sums_key, unpack(state))
  local ms = math.ceil(keep / 1000) + 1000
  keep_at_least(sums_key, ms)
  keep_at_least(costs, ms)
  keep_at_least(amounts_key, ms)
end
if ncost > 0 then
  if redis.call('ZSCORE', costs, ARGV[6]) then return {'reused', epoch} end
  local at
  at, sums, fields = read_sums(sums_key)
  cnow = math.max(now, at or now)  -- the cost windows' clock never goes back
  at = at or cnow
  estimate = parse_amounts(ARGV[10])
  local cache = {}
  local function amount_of(member, dim)
    local amounts = cache[member]
    if not amounts then
      amounts = parse_amounts(redis.call('HGET', amounts_key, member))
      cache[member] = amounts
    end
    return amounts[dim] or 0
  end
  -- Every window known: take out the records that left it since `at`.
  for _, field in ipairs(fields) do
    local dim, period = window_of(field)
    local sum = sums[field]
    if at < cnow then
      local left = redis.call('ZRANGEBYSCORE', costs, '(' .. fmt(at - period), fmt(cnow - period))
      for _, member in ipairs(left) do sum = sum - amount_of(member, dim) end
    end
    if sum < 0 or redis.call('ZCOUNT', costs, '(' .. fmt(cnow - period), '+inf') == 0 then
      sum = 0  -- (rounding: an empty window holds exactly nothing)
    end
    sums[field] = sum
    keep = math.max(keep, period)
  end
  -- A window asked for the first time: its sum from the records.
  for j = first, first + (ncost - 1) * 3, 3 do
    local field = ARGV[j] .. ':' .. ARGV[j + 1]
    if sums[field] == nil then
      local dim, period = ARGV[j], tonumber(ARGV[j + 1])
      local sum = 0
      local inside = redis.call('ZRANGEBYSCORE', costs, '(' .. fmt(cnow - period), '+inf')
      for _, member in ipairs(inside) do sum = sum + amount_of(member, dim) end
      sums[field] = sum
      fields[#fields + 1] = field
      keep = math.max(keep, period)
    end
  end
  -- Forget the records that left every window.
  local gone = redis.call('ZRANGEBYSCORE', costs, '-inf', fmt(cnow - keep))
  for j = 1, #gone, 1000 do
    redis.call('HDEL', amounts_key, unpack(gone, j, math.min(j + 999, #gone)))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', costs, '-inf', fmt(cnow - keep)) end
  -- When `excess` more of `dim` has left the window: walk its records from the oldest.
  local function frees_at(dim, period, excess)
    local rank = redis.call('ZCOUNT', costs, '-inf', fmt(cnow - period))
    local freed, last, size = 0, cnow - period, 32
    while true do
      local batch = redis.call('ZRANGE', costs, rank, rank + size - 1, 'WITHSCORES')
      for k = 1, #batch, 2 do
        last = tonumber(batch[k + 1])
        freed = freed + amount_of(batch[k], dim)
        if freed >= excess then return last + period end
      end
      if #batch < size * 2 then return last + period end  -- (rounding) once all have left
      rank = rank + size
      size = math.min(size * 2, 1024)
    end
  end
  for j = first, first + (ncost - 1) * 3, 3 do
    local dim, period, limit = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
    local need = estimate[dim] or 0
    local excess = sums[dim .. ':' .. ARGV[j + 1]] + need - limit
    if need > 0 and excess > 0 then
      local w = math.max(1, frees_at(dim, period, excess) - cnow)
      if w > wait then wait = w end
    end
  end
end

if wait > 0 then
  if ncost > 0 then save_costs() end
  return {fmt(math.max(1, wait)), epoch}
end
for i = 1, rates do
  local period = tonumber(ARGV[10 + i * 2])
  redis.call('ZADD', KEYS[7 + i], fmt(now), ARGV[8])
  keep_at_least(KEYS[7 + i], math.ceil(period / 1000) + 1000)
end
if ncost > 0 then
  redis.call('ZADD', costs, fmt(cnow), ARGV[6])
  redis.call('HSET', amounts_key, ARGV[6], ARGV[10])
  for _, field in ipairs(fields) do
    local amount = estimate[window_of(field)]
    if amount then sums[field] = sums[field] + amount end
  end
  save_costs()
end
local token = ''
if concurrent > 0 then
  local ttl = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[3], fmt(now + ttl), ARGV[6])
  keep_at_least(KEYS[3], math.ceil(ttl / 1000) + 1000)
  token = next_fence(KEYS[4], math.ceil(ttl / 1000) + 1000)
end
return {'0', epoch, token}
"""
)

# KEYS: costs, costs:amounts, costs:sums. ARGV[1] lease, ARGV[2] the actual amounts packed.
# Replaces the lease's amounts (a dimension not in ARGV[2] keeps its own) at the start's time:
# every window whose sum still counts the start gets the difference.
# Returns 1 when the lease's start was found, else 0 (nothing changed).
_SETTLE = (
    _COST_FUNCTIONS
    + """
local stamp = redis.call('ZSCORE', KEYS[1], ARGV[1])
local packed = redis.call('HGET', KEYS[2], ARGV[1])
if not stamp or not packed then return 0 end
stamp = tonumber(stamp)
local amounts, dims = parse_amounts(packed)
local delta = {}
for dim, amount in string.gmatch(ARGV[2], '([^=,]+)=([^,]+)') do
  amount = tonumber(amount)
  if amounts[dim] == nil then dims[#dims + 1] = dim end
  delta[dim] = amount - (amounts[dim] or 0)
  amounts[dim] = amount
end
local parts = {}
for i, dim in ipairs(dims) do parts[i] = dim .. '=' .. amount_text(amounts[dim]) end
redis.call('HSET', KEYS[2], ARGV[1], table.concat(parts, ','))
local at, sums, fields = read_sums(KEYS[3])
for _, field in ipairs(fields) do
  local dim, period = window_of(field)
  local change = delta[dim]
  if change and change ~= 0 and at and stamp > at - period then
    redis.call('HSET', KEYS[3], field, amount_text(math.max(0, sums[field] + change)))
  end
end
return 1
"""
)

# KEYS: epoch, pause, leases. ARGV[5] TTL (µs), ARGV[6..] leases.
# Extends the caller's live leases; after a loss of state, while the service is paused for
# it, re-creates them. Returns {epoch, leases renewed...}.
_RENEW = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[5])
local expiry = fmt(now + ttl)
local renewed = {epoch}
local recreate = lost and now < born + tonumber(ARGV[3])  -- only while the service is paused
for i = 6, #ARGV do
  local score = redis.call('ZSCORE', KEYS[3], ARGV[i])
  if recreate or (score and tonumber(score) > now) then
    redis.call('ZADD', KEYS[3], expiry, ARGV[i])
    renewed[#renewed + 1] = ARGV[i]
  end
end
if #renewed > 1 then keep_at_least(KEYS[3], math.ceil(ttl / 1000) + 1000) end
return renewed
"""
)

# KEYS: epoch, pause. ARGV[5] seconds to pause (µs). Never shortens a pause.
_PAUSE = (
    _PRELUDE
    + """
pause_until(KEYS[2], now + tonumber(ARGV[5]))
return epoch
"""
)

# KEYS: claims epoch, claims pause, claims fence, the claim. ARGV[5] owner, ARGV[6] TTL (ms).
# A claim's value is "<owner>#<fencing token>".
# Returns {the token if the owner holds the claim now else 0, epoch}.
_CLAIM = (
    _PRELUDE
    + """
local holder = redis.call('GET', KEYS[4])
if owner_of(holder) == ARGV[5] then
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  return {string.match(holder, '#(%d+)$') or '1', epoch}
end
if holder then return {'0', epoch} end
if tonumber(redis.call('GET', KEYS[2]) or '0') > now then return {'0', epoch} end
local token = next_fence(KEYS[3], tonumber(ARGV[6]) + 1000)
redis.call('SET', KEYS[4], ARGV[5] .. '#' .. token, 'PX', ARGV[6])
return {token, epoch}
"""
)

# KEYS: claims epoch, claims pause, claims fence, then the claims. ARGV[5] owner, ARGV[6] TTL
# (ms). Extends the owner's claims; after a loss of state, while claims are paused for it,
# re-creates them (with a new fencing token). Returns {epoch, 1|0...}.
_RENEW_CLAIMS = (
    _PRELUDE
    + """
local held = {epoch}
local recreate = lost and now < born + tonumber(ARGV[3])  -- only while claims are paused
for i = 4, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if owner_of(holder) == ARGV[5] then
    redis.call('PEXPIRE', KEYS[i], ARGV[6])
    held[#held + 1] = 1
  elseif recreate and not holder then
    local token = next_fence(KEYS[3], tonumber(ARGV[6]) + 1000)
    redis.call('SET', KEYS[i], ARGV[5] .. '#' .. token, 'PX', ARGV[6])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
"""
)

# KEYS[1] the claim; ARGV[1] owner. Deletes the claim only when the owner holds it.
_RELEASE_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and (string.match(holder, '^(.*)#%d+$') or holder) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


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

    __slots__ = ("keep", "seen_at", "token")

    def __init__(self) -> None:
        self.token = ""
        self.seen_at = -math.inf
        self.keep = 0.0

    def known(self) -> str:
        """The token, while recent enough that its key must still exist unless Redis lost it."""
        if time.monotonic() - self.seen_at < self.keep - _EPOCH_TRUST_MARGIN:
            return self.token
        return ""

    def saw(self, token: str, sent_at: float, keep: float) -> None:
        self.token = token
        self.seen_at = sent_at
        self.keep = keep


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
        self._acquire: Script = client.register_script(_ACQUIRE)
        self._settle: Script = client.register_script(_SETTLE)
        self._renew: Script = client.register_script(_RENEW)
        self._pause: Script = client.register_script(_PAUSE)
        self._claim: Script = client.register_script(_CLAIM)
        self._renew_claims: Script = client.register_script(_RENEW_CLAIMS)
        self._release_claim: Script = client.register_script(_RELEASE_CLAIM)
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

    def _epoch_args(self, name: str, grace: float) -> tuple[_Epoch, list[str | int]]:
        """The four prelude arguments: known epoch, a fresh token, grace (µs), key life (ms)."""
        epoch = self._epoch(name)
        keep_ms = math.ceil(grace * 1000) + _EPOCH_EXTRA_MS
        return epoch, [epoch.known(), self._new_token(), _micros(grace), keep_ms]

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
        epoch, args = self._epoch_args(service, grace)
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
        epoch, args = self._epoch_args("", ttl)
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
