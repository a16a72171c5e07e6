-- Rotate a session to a new handle, leaving a tombstone alias at the old one
-- (statekit.sessions.redis.RedisEngine.rotate).
-- KEYS: old, new [, add-index] [, remove-index]
-- ARGV: new handle, alias_ms, user (the user the index arguments are for: 'u' .. id,
--       'n' for none, '' for no check), [index: member, score, cutoff, ttl_ms,
--       old member, has add ('0'/'1'), has remove ('0'/'1')]
-- Returns {1} done, {0} gone, {2, handle} already an alias, {-1} new key taken,
-- {3, user or false} the session's stored user (m:u) is not the one ARGV[3] names:
-- nothing is done, and the caller calls again with that user's index (the hash
-- moves with its m:u, so the new handle must be in that user's index, or a
-- revoke_user of that user misses it).
local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a', 'm:u')
if head[2] then return {2, head[2]} end
if not head[1] then return {0} end
if ARGV[3] ~= '' and ARGV[3] ~= (head[3] and ('u' .. head[3]) or 'n') then return {3, head[3]} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1} end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'm:a', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[4] then
  local k = 3
  if ARGV[9] == '1' then
    redis.call('ZADD', KEYS[k], ARGV[5], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[6])
    redis.call('PEXPIRE', KEYS[k], ARGV[7])
    k = k + 1
  end
  if ARGV[10] == '1' then redis.call('ZREM', KEYS[k], ARGV[8]) end
end
return {1}
