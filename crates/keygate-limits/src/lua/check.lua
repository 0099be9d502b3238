-- One limit check, atomic: take `cost` from every bucket and a slot from every
-- slot set, or change nothing. The same sums as bucket.rs: a bucket of `limit`
-- per minute holds limit * 60000 units and refills `limit` units per ms.
-- KEYS: the n buckets, then the slot sets.
-- ARGV: n, lease id, slot ttl (ms), then limit and cost per bucket, then max per slot set.
-- Returns {refused (0, a bucket 1..n, or a slot set n+1..), wait ms, level per bucket}.
local UNITS = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local lease = ARGV[2]
local ttl = tonumber(ARGV[3])
local levels = {}
local costs = {}
local refused = 0
local wait = -1
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local cap = limit * UNITS
  local cost = math.min(tonumber(ARGV[3 + 2 * i]), limit) * UNITS
  local stored = redis.call('HMGET', KEYS[i], 'u', 't')
  local level = cap
  if stored[1] then
    level = math.min(cap, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * limit)
  end
  levels[i] = level
  costs[i] = cost
  if level < cost then
    local w = math.ceil((cost - level) / limit)
    if w > wait then
      refused = i
      wait = w
    end
  end
end
local first_max = 3 + 2 * n
if refused == 0 then
  for j = n + 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
    if redis.call('ZCARD', KEYS[j]) >= tonumber(ARGV[first_max + j - n]) then
      refused = j
      wait = 0
      break
    end
  end
end
if refused == 0 then
  wait = 0
  for i = 1, n do
    local limit = tonumber(ARGV[2 + 2 * i])
    levels[i] = levels[i] - costs[i]
    redis.call('HSET', KEYS[i], 'u', levels[i], 't', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil((limit * UNITS - levels[i]) / limit) + 1000)
  end
  for j = n + 1, #KEYS do
    redis.call('ZADD', KEYS[j], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[j], ttl)
  end
end
local out = {refused, wait}
for i = 1, n do
  out[#out + 1] = levels[i]
end
return out
