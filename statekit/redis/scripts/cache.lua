-- The cache's one script: every write and compound operation of statekit.cache.redis,
-- run by Redis and by memory:// (fakeredis with Lua) alike.
-- KEYS[1] = the namespace's generation counter; KEYS[2..] = '<base><key>';
-- ARGV[1] = the operation, ARGV[2] = len(base) in bytes, then the operation's arguments.
local op = ARGV[1]
local n = tonumber(ARGV[2])
local g = redis.call('GET', KEYS[1]) or '0'
local function real(i)
  local k = KEYS[i]
  return string.sub(k, 1, n) .. g .. ':' .. string.sub(k, n + 1)
end
if op == 'get' then
  local out = {}
  for i = 2, #KEYS do out[i - 1] = redis.call('GET', real(i)) end
  return out
elseif op == 'gett' then
  local out = {}
  for i = 2, #KEYS do
    local r = real(i)
    out[2 * i - 3] = redis.call('GET', r)
    out[2 * i - 2] = redis.call('PTTL', r)
  end
  return out
elseif op == 'set' then
  local ttl = ARGV[3]
  for i = 2, #KEYS do
    if ttl == '' then redis.call('SET', real(i), ARGV[i + 2])
    else redis.call('SET', real(i), ARGV[i + 2], 'PX', ttl) end
  end
  return #KEYS - 1
elseif op == 'add' then
  local r
  if ARGV[3] == '' then r = redis.call('SET', real(2), ARGV[4], 'NX')
  else r = redis.call('SET', real(2), ARGV[4], 'PX', ARGV[3], 'NX') end
  if r then return 1 end
  return 0
elseif op == 'del' then
  local c = 0
  for i = 2, #KEYS do c = c + redis.call('DEL', real(i)) end
  return c
elseif op == 'incr' then
  -- the result is read back as text: INCRBY's integer reply becomes a Lua double,
  -- which loses precision above 2^53
  local r = real(2)
  if redis.call('EXISTS', r) == 0 then
    if ARGV[5] ~= '1' then return false end
    redis.call('INCRBY', r, ARGV[3])
    if ARGV[4] ~= '' then redis.call('PEXPIRE', r, ARGV[4]) end
    return redis.call('GET', r)
  end
  redis.call('INCRBY', r, ARGV[3])
  return redis.call('GET', r)
elseif op == 'touch' then
  local r = real(2)
  if ARGV[3] == '' then
    if redis.call('EXISTS', r) == 1 then redis.call('PERSIST', r) return 1 end
    return 0
  end
  return redis.call('PEXPIRE', r, ARGV[3])
elseif op == 'sweep' then
  -- KEYS[2..]: whole key names of generations below ARGV[3], found by SCAN. Refused
  -- (-1) unless the generation is still at least ARGV[3]: a counter that was lost
  -- (FLUSHALL, eviction) restarted below it, and those names are live again.
  if tonumber(g) < tonumber(ARGV[3]) then return -1 end
  return redis.call('UNLINK', unpack(KEYS, 2))
elseif op == 'unlock' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return redis.call('DEL', KEYS[2]) end
  return 0
elseif op == 'extend' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
  return 0
end
return redis.error_reply('statekit cache script: unknown op ' .. tostring(op))
