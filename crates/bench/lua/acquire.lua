-- Concurrency-slot acquire, all-or-nothing over an org key and the global key.
-- KEYS[1] = org ZSET, KEYS[2] = global ZSET, KEYS[3] = limits HASH (zset name -> limit)
-- ARGV[1] = lease id, ARGV[2] = ttl_ms, ARGV[3] = default limit
-- Members are lease ids scored by expiry (server clock, ms). Returns {1, expires_at_ms}
-- when granted, {0, index of the blocking key} when denied.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[2])
-- Purge expired leases first, so a crashed holder's slot frees itself.
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
-- Idempotent retry: a live lease with this id is returned as granted again.
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held then
  return {1, tonumber(held)}
end
for i = 1, 2 do
  local limit = tonumber(redis.call('HGET', KEYS[3], KEYS[i]) or ARGV[3])
  if redis.call('ZCARD', KEYS[i]) >= limit then
    return {0, i}
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], expires, ARGV[1])
end
return {1, expires}
