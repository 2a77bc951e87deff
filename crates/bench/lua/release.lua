-- Release a lease on both keys. KEYS[1] = org ZSET, KEYS[2] = global ZSET,
-- ARGV[1] = lease id. Returns how many slots were freed (0 for unknown/expired).
return redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
