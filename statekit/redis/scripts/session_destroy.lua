-- Delete a session and its user-index entry (statekit.sessions.redis.RedisEngine.destroy).
-- KEYS: session [, index]; ARGV: member, owner ('u' .. user id: delete the session only
-- if that user holds it (m:u), SessionStore.revoke_session given a user; '' for no check).
-- An alias returns its target, {2, handle}: without an owner it is deleted and the
-- caller deletes the target too (a request that loaded the session before a rotation
-- still ends it); with one it is kept, as the target's owner is the alias's: the caller
-- checks the target, and deletes the alias once the target is deleted.
-- Else {1}: a live session was deleted; {0}: none was (nothing there, or not the
-- owner's: another user's or an anonymous session, left as it is). The handle leaves
-- the index either way (it follows m:u: an entry of a session that user does not hold
-- is stale).
local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a', 'm:u')
if head[2] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) end
  return {2, head[2]}
end
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[2] ~= '' and not (head[1] and head[3] and ARGV[2] == 'u' .. head[3]) then return {0} end
redis.call('DEL', KEYS[1])
return {head[1] and 1 or 0}
