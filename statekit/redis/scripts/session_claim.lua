-- Set a plain key unless it is set (a carried-over session's claim: the first request
-- to set it wins). KEYS: claim; ARGV: value, ttl_ms.
-- Returns the value already there, or false after setting it.
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
