-- A fixed window counter: the count in the window now running, one more when
-- ARGV[2] is 1. KEYS[1]: the counter. ARGV: window length (ms), hit (0 or 1).
-- Returns {count, ms until the window ends}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[1])
local index = math.floor(now / len)
local stored = redis.call('HMGET', KEYS[1], 'i', 'c')
local count = 0
if stored[1] and tonumber(stored[1]) == index then
  count = tonumber(stored[2])
end
if ARGV[2] == '1' then
  count = count + 1
  redis.call('HSET', KEYS[1], 'i', index, 'c', count)
  redis.call('PEXPIRE', KEYS[1], len)
end
return {count, len - now % len}
