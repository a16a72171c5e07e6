-- One batch of a user's revocation (statekit.sessions.redis.RedisEngine.revoke_user):
-- delete up to ARGV[3] of the sessions in the user's index, but the one to keep, and
-- drop them from the index. Standalone and Sentinel only: the session keys are built
-- from the index members, which Redis Cluster forbids.
-- KEYS: index; ARGV: session key prefix, member to keep ('' for none), batch size.
-- The session to keep may have been rotated since the last batch (a login on the
-- device being kept): the handles its tombstone aliases lead to are kept too.
-- Returns {sessions deleted, members other than the kept ones still in the index}.
local batch = tonumber(ARGV[3])
local keep, kept = {}, 0
local k = ARGV[2]
for _ = 1, 4 do  -- the handle and up to 3 rotations (the store follows as many)
  if not k or k == '' then break end
  keep[k] = true
  kept = kept + 1
  k = redis.call('HGET', ARGV[1] .. k, 'm:a')
end
local members = redis.call('ZRANGE', KEYS[1], 0, batch + kept - 1)  -- the kept ones may be among them
local gone, n = {}, 0
for _, m in ipairs(members) do
  if not keep[m] and #gone < batch then
    n = n + redis.call('DEL', ARGV[1] .. m)
    gone[#gone + 1] = m
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
local left = redis.call('ZCARD', KEYS[1])
for m in pairs(keep) do
  if redis.call('ZSCORE', KEYS[1], m) then left = left - 1 end
end
return {n, left}
