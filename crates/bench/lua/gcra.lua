-- GCRA rate check (same algorithm as quorate's core): KEYS[1] = bucket key holding the
-- theoretical arrival time (TAT, ms, server clock).
-- ARGV[1] = limit, ARGV[2] = period_ms, ARGV[3] = burst, ARGV[4] = cost
-- Returns {allowed (1/0), remaining, retry_after_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local interval = period / limit          -- emission interval
local tolerance = interval * burst       -- bucket capacity in time
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0}
