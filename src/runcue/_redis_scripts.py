"""The Lua scripts of :class:`runcue.RedisStore`, each run atomically by the server on its
own clock (see ``_redis.py`` for the keys they keep and what each decision means).

``PRELUDE`` (the server's time, the epoch check after a restart) and ``COST_FUNCTIONS``
(reading the cost windows) are shared; every other constant is one whole script.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "CLAIM",
    "PAUSE",
    "RELEASE_CLAIM",
    "RENEW",
    "RENEW_CLAIMS",
    "SETTLE",
]

# Shared by every script: the server's time in whole microseconds, and the epoch check.
# KEYS[1] epoch key, KEYS[2] pause key; ARGV[1] known epoch ('' = none), ARGV[2] a new token,
# ARGV[3] grace (µs) to pause for when the state was lost, ARGV[4] epoch key lifetime (ms).
# Sets `now`, `epoch` and `lost`.
PRELUDE = """
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
COST_FUNCTIONS = """
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
ACQUIRE = (
    PRELUDE
    + COST_FUNCTIONS
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
SETTLE = (
    COST_FUNCTIONS
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
RENEW = (
    PRELUDE
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
PAUSE = (
    PRELUDE
    + """
pause_until(KEYS[2], now + tonumber(ARGV[5]))
return epoch
"""
)

# KEYS: claims epoch, claims pause, claims fence, the claim. ARGV[5] owner, ARGV[6] TTL (ms).
# A claim's value is "<owner>#<fencing token>".
# Returns {the token if the owner holds the claim now else 0, epoch}.
CLAIM = (
    PRELUDE
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
RENEW_CLAIMS = (
    PRELUDE
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
RELEASE_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and (string.match(holder, '^(.*)#%d+$') or holder) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
