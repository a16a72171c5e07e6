-- The cache's one script: every write and compound operation of statekit.cache.redis
-- and the sweep's removals (op 'sweep', below), run by Redis, Redis Cluster and memory:// (fakeredis with Lua) alike.
-- KEYS: the names the operation touches, already qualified with a generation
-- ('<head><gen>:<key>'; locks: '<head>lock:<name>'), all in one hash slot.
-- ARGV[1] = the operation; ARGV[2] = the generation those names carry, to be checked
-- against the namespace's counter, which is then KEYS[1] (standalone and Sentinel:
-- one atomic step), or '' for no check (Cluster: the counter lives in another slot;
-- the caller keeps its generation current, see statekit/cache/redis.py);
-- ARGV[3..] = the operation's arguments.
-- A failed check changes nothing and answers the error 'STALEGEN <current>'.
local op = ARGV[1]
if op == 'sweep' then
  -- standalone and Sentinel: KEYS[1] the counter, KEYS[2..] names of generations below
  -- ARGV[2] (found by SCAN), unlinked only while the counter is at least ARGV[2], in the
  -- same step: a counter that was lost (FLUSHALL, eviction) restarted below it, and
  -- names of those generations may be live again. Answers how many went, or -1 (the
  -- counter is below: nothing removed)
  if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[2]) then return -1 end
  return redis.call('UNLINK', unpack(KEYS, 2))
end
-- when the value at the name k stops being one get() finds (epoch seconds), as
-- statekit.cache.protocol.expiry: a get_or_set envelope ('\2', then its logical expiry as
-- a little-endian IEEE double, then the compute time, then the payload) its logical
-- expiry (a value past it is only kept to be served stale; math.huge once persisted);
-- any other value math.huge; a missing name, an empty value or a truncated envelope
-- -math.huge (a miss for get() too); then whether it is a get_or_set envelope. Only the
-- header is read, as has() does
local function expiry(k)
  local h = redis.call('GETRANGE', k, 0, 17)
  if h == '' then return -math.huge, false end
  if string.byte(h, 1) ~= 2 then return math.huge, false end
  if #h < 18 then return -math.huge, false end
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(h, 2, 9)
  local e = (b8 % 128) * 16 + math.floor(b7 / 16)
  local m = ((((((b7 % 16) * 256 + b6) * 256 + b5) * 256 + b4) * 256 + b3) * 256 + b2) * 256 + b1
  local x
  if e == 2047 then x = math.huge
  elseif e == 0 then x = m * 2 ^ -1074
  else x = (1 + m / 2 ^ 52) * 2 ^ (e - 1023) end
  if b8 >= 128 then x = -x end
  return x, true
end
-- whether the name k holds a value get() finds at the caller's clock now (epoch
-- seconds, as text)
local function live(k, now)
  return expiry(k) > tonumber(now)
end
local f = 1
if ARGV[2] ~= '' then
  local g = redis.call('GET', KEYS[1]) or '0'
  if g ~= ARGV[2] then return redis.error_reply('STALEGEN ' .. g) end
  f = 2
end
if op == 'gett' then
  local out = {}
  for i = f, #KEYS do
    out[#out + 1] = redis.call('GET', KEYS[i])
    out[#out + 1] = redis.call('PTTL', KEYS[i])
  end
  return out
elseif op == 'set' or op == 'xset' then
  -- ARGV[4..]: the values of KEYS[f..]; the names after those are the values'
  -- single-flight locks, removed too (as 'del' does): a value computed before this
  -- write is then not stored over it. 'xset': only if present (django-redis'
  -- set(xx=True)), one value ARGV[4] stored only where live(KEYS[f], ARGV[5]);
  -- answers how many were stored
  local ttl = ARGV[3]
  local n = #ARGV - 3
  if op == 'xset' then
    if not live(KEYS[f], ARGV[5]) then return 0 end
    n = 1
  end
  for i = f, f + n - 1 do
    if ttl == '' then redis.call('SET', KEYS[i], ARGV[i - f + 4])
    else redis.call('SET', KEYS[i], ARGV[i - f + 4], 'PX', ttl) end
  end
  for i = f + n, #KEYS do redis.call('DEL', KEYS[i]) end
  return n
elseif op == 'add' then
  local r
  if ARGV[3] == '' then r = redis.call('SET', KEYS[f], ARGV[4], 'NX')
  else r = redis.call('SET', KEYS[f], ARGV[4], 'PX', ARGV[3], 'NX') end
  if r then return 1 end
  return 0
elseif op == 'del' then
  -- ARGV[3] (if given) = how many of KEYS[f..] are values (counted); the names after
  -- them are the values' single-flight locks, removed too: a value computed before
  -- this delete is then refused when its flight stores it ('fset' checks the lock)
  local n = tonumber(ARGV[3] or '') or (#KEYS - f + 1)
  local c = 0
  for i = f, #KEYS do
    local d = redis.call('DEL', KEYS[i])
    if i < f + n then c = c + d end
  end
  return c
elseif op == 'incr' then
  -- the result is read back as text: INCRBY's integer reply becomes a Lua double,
  -- which loses precision above 2^53
  local r = KEYS[f]
  if redis.call('EXISTS', r) == 0 then
    if ARGV[5] ~= '1' then return false end
    redis.call('INCRBY', r, ARGV[3])
    if ARGV[4] ~= '' then redis.call('PEXPIRE', r, ARGV[4]) end
    return redis.call('GET', r)
  end
  redis.call('INCRBY', r, ARGV[3])
  return redis.call('GET', r)
elseif op == 'touch' then
  -- a new lifetime of ARGV[3] ms ('': none) for a value get() finds at the caller's
  -- clock ARGV[4] (else nothing changes: 0), as statekit.cache.protocol.touched: a
  -- get_or_set envelope's logical expiry becomes ARGV[5] (now + the lifetime, packed;
  -- +inf for none, as persist), and it is kept as long past it, to be served stale, as
  -- it was kept past its old one; one that kept no such window (made permanent, or a
  -- TTL removed by hand) is kept ARGV[6] ms past it (the caller's stale_ttl)
  local r = KEYS[f]
  local e, envelope = expiry(r)
  local now = tonumber(ARGV[4])
  if e <= now then return 0 end
  if ARGV[3] == '' then
    redis.call('PERSIST', r)
  elseif envelope then
    local left = redis.call('PTTL', r)
    local ms = tonumber(ARGV[3])
    if e ~= math.huge and left >= 0 then ms = ms + math.max(0, left - math.floor((e - now) * 1000))
    else ms = ms + tonumber(ARGV[6]) end
    redis.call('PEXPIRE', r, string.format('%.0f', ms))
  else
    redis.call('PEXPIRE', r, ARGV[3])
  end
  if envelope then redis.call('SETRANGE', r, 1, ARGV[5]) end
  return 1
elseif op == 'persist' then
  -- the key never expires, if it holds a value get() finds at the caller's clock
  -- ARGV[3] (else nothing changes: 0): PERSIST, and a get_or_set envelope's logical
  -- expiry becomes +inf (statekit.cache.protocol.persisted), so it is neither stale
  -- nor recomputed later. 1 only if an expiry (either) was removed, as PERSIST
  local r = KEYS[f]
  local e = expiry(r)
  if e <= tonumber(ARGV[3]) then return 0 end
  local removed = redis.call('PERSIST', r)
  if e == math.huge then return removed end
  redis.call('SETRANGE', r, 1, '\0\0\0\0\0\0\240\127')
  return 1
elseif op == 'fset' then
  -- a flight's store: 'set' of KEYS[f] only while the token ARGV[5] holds the lock
  -- KEYS[f + 1] (a leader whose lease lapsed while it computed must not write over what
  -- the next leader stored since; a delete since removed the lock). ARGV[6] = '1': the
  -- store of a caller that gave up waiting for that token's holder, which also removes
  -- the lock, so the slower holder's own store is refused. 1 stored, 0 refused
  if redis.call('GET', KEYS[f + 1]) ~= ARGV[5] then return 0 end
  if ARGV[3] == '' then redis.call('SET', KEYS[f], ARGV[4])
  else redis.call('SET', KEYS[f], ARGV[4], 'PX', ARGV[3]) end
  if ARGV[6] == '1' then redis.call('DEL', KEYS[f + 1]) end
  return 1
elseif op == 'unlock' then
  -- compare-and-delete: a lock held by the token ARGV[3] (or, on Cluster, a value a
  -- refused flight wrote, taken back: see plan_set_if_locked)
  if redis.call('GET', KEYS[f]) == ARGV[3] then return redis.call('DEL', KEYS[f]) end
  return 0
elseif op == 'extend' then
  if redis.call('GET', KEYS[f]) == ARGV[3] then return redis.call('PEXPIRE', KEYS[f], ARGV[4]) end
  return 0
end
return redis.error_reply('statekit cache script: unknown op ' .. tostring(op))
