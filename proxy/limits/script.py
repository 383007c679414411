"""The Lua scripts that keep the limits in Redis: one atomic round trip per admission.

Keys of one API key (all in one hash slot, so the scripts run on Redis Cluster too):

    {csp:<name>}:req    sorted set: one member per admitted request (id), score = admission time
    {csp:<name>}:tok    sorted set: one member per charge ("<id>:<tokens>"), score = charge time
    {csp:<name>}:tsum   string: the sum of the charges in :tok (kept beside it, so an admission
                        does not add up the whole window)
    {csp:<name>}:par    sorted set: one member per request in flight (id), score = lease expiry

Times are microseconds of Redis's own clock (``TIME``): every process and replica compares
against the same clock, however skewed their own are. The window is (now - window, now]: an
entry made at t counts until t + window. Every write refreshes a TTL on the keys it touched,
so an idle key disappears by itself.

A script is registered once per client (redis-py ``register_script``): EVALSHA, and SCRIPT
LOAD + EVALSHA again only when the server does not know it (after a restart).
"""

from __future__ import annotations

# Shared by both scripts: the clock, and the trim that keeps :tok and :tsum in step.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function amount(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

-- Drop the charges at or before edge and subtract them from the total; returns the total.
local function trim_tokens(tok, tsum, edge)
  local gone = redis.call('ZRANGEBYSCORE', tok, '-inf', edge)
  if #gone > 0 then
    local sum = 0
    for _, member in ipairs(gone) do sum = sum + amount(member) end
    redis.call('ZREMRANGEBYSCORE', tok, '-inf', edge)
    redis.call('DECRBY', tsum, sum)
  end
  if redis.call('ZCARD', tok) == 0 then  -- nothing charged: the total is 0, whatever drifted
    redis.call('DEL', tsum)
    return 0
  end
  return tonumber(redis.call('GET', tsum) or '0')
end
"""

# KEYS: req, tok, tsum, par
# ARGV: window_us, rpm, tpm, max_parallel (-1 = no limit), tokens, id, lease_us, ttl_ms
# Returns: {admitted, refused (0 none, 1 requests, 2 tokens, 3 parallel), requests, tokens,
#           parallel, reset_requests_us, reset_tokens_us}
ADMIT = (
    _PRELUDE
    + """
local window, rpm, tpm, par_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local tokens, id, lease, ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local edge = now - window
local nreq, used, npar = 0, 0, 0

if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
  nreq = redis.call('ZCARD', KEYS[1])
end
if tpm >= 0 then used = trim_tokens(KEYS[2], KEYS[3], edge) end
if par_max >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)  -- leases nobody renewed
  npar = redis.call('ZCARD', KEYS[4])
end

local refused = 0
if rpm >= 0 and nreq >= rpm then refused = 1
elseif tpm >= 0 and used + tokens > tpm then refused = 2
elseif par_max >= 0 and npar >= par_max then refused = 3
end

if refused == 0 then
  if rpm >= 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('PEXPIRE', KEYS[1], ttl)
    nreq = nreq + 1
  end
  if tpm >= 0 then
    redis.call('ZADD', KEYS[2], now, id .. ':' .. tokens)
    redis.call('INCRBY', KEYS[3], tokens)
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
    used = used + tokens
  end
  if par_max >= 0 then
    redis.call('ZADD', KEYS[4], now + lease, id)
    redis.call('PEXPIRE', KEYS[4], ttl)
    npar = npar + 1
  end
end

-- How long until an entry leaves: the oldest one (admitted), or the one whose leaving lets
-- the refused request in. Nothing to wait for: 0, or a whole window when a limit of 0 refused.
local function free_in(at, blocked)
  if at == nil then
    if blocked then return window end
    return 0
  end
  return math.max(0, at + window - now)
end

local reset_req, reset_tok = 0, 0
if rpm >= 0 then
  local at = nil
  if nreq > 0 and rpm > 0 then
    local index = 0
    if refused == 1 then index = nreq - rpm end
    at = tonumber(redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')[2])
  end
  reset_req = free_in(at, refused == 1)
end
if tpm >= 0 then
  -- Admitted: the oldest charge. Refused: oldest first until enough would be freed, at most
  -- 512 of them (past that, a whole window is the honest bound).
  local need, last = 1, 0
  if refused == 2 then need, last = used + tokens - tpm, 511 end
  local at, freed = nil, 0
  local charges = redis.call('ZRANGE', KEYS[2], 0, last, 'WITHSCORES')
  for i = 1, #charges, 2 do
    freed = freed + amount(charges[i])
    if freed >= need then at = tonumber(charges[i + 1]) break end
  end
  reset_tok = free_in(at, refused == 2)
end

return {refused == 0 and 1 or 0, refused, nreq, used, npar, reset_req, reset_tok}
"""
)

# KEYS: tok, tsum, par
# ARGV: id, reserved, used (-1 = keep the reservation), window_us, ttl_ms
# Frees the slot; replaces the reservation by the real figure while it is in the window, or
# charges the overrun now when the answer outlived the window (its reservation has left).
SETTLE = (
    _PRELUDE
    + """
local id, reserved, used = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window, ttl = tonumber(ARGV[4]), ARGV[5]
redis.call('ZREM', KEYS[3], id)
if used < 0 then return 0 end

trim_tokens(KEYS[1], KEYS[2], now - window)
local member = id .. ':' .. reserved
local at = redis.call('ZSCORE', KEYS[1], member)
if at then
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[1], at, id .. ':' .. used)
  redis.call('INCRBY', KEYS[2], used - reserved)
elseif used > reserved then
  redis.call('ZADD', KEYS[1], now, id .. '+:' .. (used - reserved))
  redis.call('INCRBY', KEYS[2], used - reserved)
else
  return 0
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
)

# KEYS: par; ARGV: lease_us, ttl_ms, id...
# Only slots that still exist are renewed (XX): a lease that already expired (Redis was away
# longer than the lease) may have been given to someone else and is not resurrected.
RENEW = """
local t = redis.call('TIME')
local until_us = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_us, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""
