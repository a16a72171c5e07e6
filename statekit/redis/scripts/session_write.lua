-- Write a session: set and delete the fields named, bump m:v, set the expiry, and
-- keep the user indexes in step (statekit.sessions.redis.RedisEngine.write).
-- KEYS: session [, add-index] [, remove-index]
-- ARGV: create ('0', or the new session's m:c), ttl_ms, near (see below),
--       nsets, f1, v1, ..., ndels, f1, ..., user (the user the caller loaded, whose
--       index the index arguments keep: 'u' .. id, 'n' for none, '' for no check),
--       [index: member, score, cutoff, ttl_ms, old member, has add ('0'/'1'),
--       has remove ('0'/'1')]
-- Returns {1, version [, hash]} done, {0} gone, {2, handle} an alias, {-1} taken,
-- {3, user or false}: the stored user (m:u) is not the one the caller loaded (another
-- request changed it since): nothing is written, and the caller calls again with
-- index arguments for that user (else the session stayed in, or went back to, the
-- index of a user it no longer belongs to: their revoke_user deleted it).
-- A create finding its own m:c is that create retried (its reply was lost), not a
-- collision. Fields go in chunks of 1000 arguments (unpack fails past about 8000).
-- near: '' without a near cache; else the version of the copy of this hash the
-- caller holds ('0' for a create, '-1' for none). The closing read makes the calling
-- connection track the key again (the write itself ended its tracking). The hash
-- is returned only when this write did not take it from that version to the next:
-- otherwise the caller's copy with this write's fields applied is the hash (every
-- change of a session hash bumps m:v), and sending it back cost ~20 us a write.
local i = 5
local n = tonumber(ARGV[4])
local d = tonumber(ARGV[i + 2 * n])
local u = i + 2 * n + 1 + d  -- the user; the index arguments follow
if ARGV[1] ~= '0' then
  local c = redis.call('HGET', KEYS[1], 'm:c')
  if c ~= ARGV[1] and redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
else
  local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a', 'm:u')
  if head[2] then return {2, head[2]} end
  if not head[1] then return {0} end
  if ARGV[u] ~= '' and ARGV[u] ~= (head[3] and ('u' .. head[3]) or 'n') then return {3, head[3]} end
end
local function chunked(cmd, first, last)
  for j = first, last, 1000 do
    redis.call(cmd, KEYS[1], unpack(ARGV, j, math.min(j + 999, last)))
  end
end
chunked('HSET', i, i + 2 * n - 1)
chunked('HDEL', i + 2 * n + 1, u - 1)
i = u + 1
local v = redis.call('HINCRBY', KEYS[1], 'm:v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[i] then
  local k = 2
  if ARGV[i + 5] == '1' then
    redis.call('ZADD', KEYS[k], ARGV[i + 1], ARGV[i])
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[i + 2])
    redis.call('PEXPIRE', KEYS[k], ARGV[i + 3])
    k = k + 1
  end
  if ARGV[i + 6] == '1' then redis.call('ZREM', KEYS[k], ARGV[i + 4]) end
end
if ARGV[3] == '' then return {1, v} end
if v - 1 == tonumber(ARGV[3]) then
  redis.call('HEXISTS', KEYS[1], 'm:v')
  return {1, v}
end
return {1, v, redis.call('HGETALL', KEYS[1])}
