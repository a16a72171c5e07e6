-- Release a broadcast job's lease if the caller still holds it.
-- KEYS: lease. ARGV: owner|token. -> 1 released | 0 not held
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
