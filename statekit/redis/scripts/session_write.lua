-- Write a session: set and delete the fields named, bump m:v, set the expiry, and
-- keep the user indexes in step (statekit.sessions.redis.RedisEngine.write).
-- KEYS: session [, add-index] [, remove-index]
-- ARGV: create ('0', or the new session's m:c), ttl_ms, near (see below),
--       nsets, f1, v1, ..., ndels, f1, ..., [index: member, score, cutoff, ttl_ms,
--       old member, has add ('0'/'1'), has remove ('0'/'1')]
-- Returns {1, version [, hash]} done, {0} gone, {2, handle} an alias, {-1} taken.
-- A create finding its own m:c is that create retried (its reply was lost), not a
-- collision. Fields go in chunks of 1000 arguments (unpack fails past about 8000).
-- near: '' without a near cache; else the version of the copy of this hash the
-- caller holds ('0' for a create, '-1' for none). The closing read makes the calling
-- connection track the key again (the write itself ended its tracking). The hash
-- is returned only when this write did not take it from that version to the next:
-- otherwise the caller's copy with this write's fields applied is the hash (every
-- change of a session hash bumps m:v), and sending it back cost ~20 us a write.
if ARGV[1] ~= '0' then
  local c = redis.call('HGET', KEYS[1], 'm:c')
  if c ~= ARGV[1] and redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
else
  local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a')
  if head[2] then return {2, head[2]} end
  if not head[1] then return {0} end
end
local function chunked(cmd, first, last)
  for j = first, last, 1000 do
    redis.call(cmd, KEYS[1], unpack(ARGV, j, math.min(j + 999, last)))
  end
end
local i = 5
local n = tonumber(ARGV[4])
chunked('HSET', i, i + 2 * n - 1)
i = i + 2 * n
local d = tonumber(ARGV[i])
chunked('HDEL', i + 1, i + d)
i = i + 1 + d
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
