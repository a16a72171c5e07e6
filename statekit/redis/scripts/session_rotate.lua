-- Rotate a session to a new handle, leaving a tombstone alias at the old one
-- (statekit.sessions.redis.RedisEngine.rotate).
-- KEYS: old, new [, add-index] [, remove-index]
-- ARGV: new handle, alias_ms, [index: member, score, cutoff, ttl_ms, old member,
--       has add ('0'/'1'), has remove ('0'/'1')]
-- Returns {1} done, {0} gone, {2, handle} already an alias, {-1} new key taken.
local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a')
if head[2] then return {2, head[2]} end
if not head[1] then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1} end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'm:a', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] then
  local k = 3
  if ARGV[8] == '1' then
    redis.call('ZADD', KEYS[k], ARGV[4], ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[5])
    redis.call('PEXPIRE', KEYS[k], ARGV[6])
    k = k + 1
  end
  if ARGV[9] == '1' then redis.call('ZREM', KEYS[k], ARGV[7]) end
end
return {1}
