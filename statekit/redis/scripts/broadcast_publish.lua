-- Retain a broadcast value, bump its version and publish it, refusing a stale token.
-- KEYS: state hash, fence. ARGV: token ('' = unfenced), data, now_ms, new epoch, channel,
-- 's' to publish on the sharded channel (SPUBLISH: Redis 7+ / Valkey Cluster; the
-- channel then shares the keys' hash tag) or '' for PUBLISH
-- -> {version, epoch} | {-1, current token}
if ARGV[1] ~= '' then
  local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
  if cur ~= tonumber(ARGV[1]) then return {-1, cur} end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'updated_at', ARGV[3])
local message = epoch .. ' ' .. version .. ' ' .. ARGV[3] .. ' ' .. ARGV[2]
if ARGV[6] == 's' then redis.call('SPUBLISH', ARGV[5], message)
else redis.call('PUBLISH', ARGV[5], message) end
return {version, epoch}
