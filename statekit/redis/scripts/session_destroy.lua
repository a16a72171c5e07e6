-- Delete a session and its user-index entry (statekit.sessions.redis.RedisEngine.destroy).
-- KEYS: session [, index]; ARGV: member.
-- An alias is deleted and its target returned, {2, handle} (the caller deletes that
-- too: a request that loaded the session before a rotation still ends it); else {1}.
local a = redis.call('HGET', KEYS[1], 'm:a')
redis.call('DEL', KEYS[1])
if a then return {2, a} end
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[1]) end
return {1}
