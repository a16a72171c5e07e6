-- One batch of a user's revocation (statekit.sessions.redis.RedisEngine.revoke_user):
-- delete up to ARGV[3] of the sessions in the user's index, but the one to keep, and
-- drop them from the index. Standalone and Sentinel only: the session keys are built
-- from the index members, which Redis Cluster forbids.
-- KEYS: index; ARGV: session key prefix, member to keep ('' for none), batch size.
-- Returns {sessions deleted, members other than the kept one still in the index}.
local batch = tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], 0, batch)  -- batch + 1: one may be kept
local gone, n = {}, 0
for _, m in ipairs(members) do
  if m ~= ARGV[2] and #gone < batch then
    n = n + redis.call('DEL', ARGV[1] .. m)
    gone[#gone + 1] = m
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
local left = redis.call('ZCARD', KEYS[1])
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[2]) then left = left - 1 end
return {n, left}
