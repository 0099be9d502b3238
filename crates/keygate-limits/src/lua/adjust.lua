-- Corrects a bucket by ARGV[2] tokens (positive takes more, negative gives
-- back): never above full, never owing more than one whole bucket (bucket.rs).
-- KEYS[1]: the bucket. ARGV: limit, delta.
local UNITS = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local cap = limit * UNITS
local stored = redis.call('HMGET', KEYS[1], 'u', 't')
local level = cap
if stored[1] then
  level = math.min(cap, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * limit)
end
level = level - tonumber(ARGV[2]) * UNITS
if level > cap then level = cap end
if level < -cap then level = -cap end
redis.call('HSET', KEYS[1], 'u', level, 't', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - level) / limit) + 1000)
return level
