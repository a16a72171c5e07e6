-- Claim (or renew) a broadcast job's lease and record the slot as claimed.
-- KEYS: state hash, lease, fence. ARGV: owner, lease_ms, slot (its start in ms; -1: lease only).
-- A new fencing token when the lease is taken and with every slot claimed, so a
-- publish is only accepted from the latest slot's computation (an older one of the
-- same leader, paused past its timeout, is refused too). The first token is the
-- server's time in microseconds: below 2^53, exact as a Lua number, written with %d.
-- -> {0, holder_token, pttl} held by another
--  | {1, token, 0} leader, slot already claimed
--  | {2, token, 0} leader, slot claimed now: compute it
local cur = redis.call('GET', KEYS[2])
local token
if cur then
  local sep = string.find(cur, '|', 1, true)
  token = tonumber(string.sub(cur, sep + 1))
  if string.sub(cur, 1, sep - 1) ~= ARGV[1] then
    return {0, token, redis.call('PTTL', KEYS[2])}
  end
end
local slot = tonumber(ARGV[3])
local claimed = slot >= 0 and slot > tonumber(redis.call('HGET', KEYS[1], 'slot') or '-1')
if cur and not claimed then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, token, 0}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  -- a first claim, or Redis lost its data: start past every token given before it
  -- (the server's time in us), not at 1, or an old leader's token could be current again
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
end
token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. string.format('%d', token), 'PX', ARGV[2])
if not claimed then return {1, token, 0} end
redis.call('HSET', KEYS[1], 'slot', ARGV[3])
return {2, token, 0}
