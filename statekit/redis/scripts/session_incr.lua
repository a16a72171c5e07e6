-- Add to an integer session value atomically (statekit.sessions.redis.RedisEngine.incr).
-- KEYS: session; ARGV: field, amount, codec ('json' or 'msgpack').
-- Returns {1, new value, new version}, {0} gone, {2, handle} an alias.
-- json: the value is the integer's text, which HINCRBY adds to exactly (64 bits) and
-- returns as Redis's text. msgpack: Lua numbers are doubles, so the integer is
-- decoded and encoded here (plain Lua: no cmsgpack needed) and a result past 2^53
-- is refused instead of stored rounded, and so is a stored value past 2^53 (it was
-- read as a sentinel once, and a decrement stored 2^53 - 1 over it). A float, a
-- boolean or anything else is refused: it is no integer; so is an amount that is no
-- integer below 2^53.
local head = redis.call('HMGET', KEYS[1], 'm:c', 'm:a')
if head[2] then return {2, head[2]} end
if not head[1] then return {0} end
if ARGV[3] ~= 'msgpack' then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
  return {1, redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HINCRBY', KEYS[1], 'm:v', 1)}
end
local LIMIT = 9007199254740992  -- 2^53
local function uint(s, first, size)  -- big-endian unsigned
  local n = 0
  for j = first, first + size - 1 do n = n * 256 + string.byte(s, j) end
  return n
end
local function decode(s)  -- a msgpack integer; nil if none; nil, true past 2^53
  local b = string.byte(s, 1)
  local sizes = {[0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8,
                 [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8}
  if #s == 1 and b <= 0x7f then return b end
  if #s == 1 and b >= 0xe0 then return b - 256 end
  local size = sizes[b]
  if not size or #s ~= size + 1 then return nil end
  if size == 8 then
    local hi, lo = uint(s, 2, 4), uint(s, 6, 4)
    if b == 0xd3 and hi >= 2147483648 then hi = hi - 4294967296 end
    if hi > 2097152 or (hi == 2097152 and lo > 0) or hi < -2097152 then return nil, true end  -- past 2^53
    return hi * 4294967296 + lo
  end
  local n = uint(s, 2, size)
  if b >= 0xd0 and n >= 2 ^ (8 * size - 1) then n = n - 2 ^ (8 * size) end
  return n
end
local function bytes(n, size)  -- n >= 0, big-endian
  local out = {}
  for j = size, 1, -1 do
    out[j] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end
local function encode(n)  -- the smallest form, as msgpack-python packs it
  if n >= 0 then
    if n < 128 then return string.char(n) end
    if n < 256 then return '\204' .. bytes(n, 1) end
    if n < 65536 then return '\205' .. bytes(n, 2) end
    if n < 4294967296 then return '\206' .. bytes(n, 4) end
    local hi = math.floor(n / 4294967296)
    return '\207' .. bytes(hi, 4) .. bytes(n - hi * 4294967296, 4)
  end
  if n >= -32 then return string.char(256 + n) end
  if n >= -128 then return '\208' .. bytes(256 + n, 1) end
  if n >= -32768 then return '\209' .. bytes(65536 + n, 2) end
  if n >= -2147483648 then return '\210' .. bytes(4294967296 + n, 4) end
  local hi = math.floor(n / 4294967296)
  return '\211' .. bytes(hi + 4294967296, 4) .. bytes(n - hi * 4294967296, 4)
end
local amount = tonumber(ARGV[2])
if not amount or amount ~= math.floor(amount) or math.abs(amount) >= LIMIT then
  return redis.error_reply('ERR increment is not an integer below 2^53 (msgpack codec)')
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local n, huge = 0, false
if cur then n, huge = decode(cur) end
if huge then return redis.error_reply('ERR session value is past 2^53 (msgpack codec)') end
if not n then return redis.error_reply('ERR session value is not an integer') end
n = n + amount
if n ~= n or math.abs(n) >= LIMIT then
  return redis.error_reply('ERR increment would reach 2^53 (msgpack codec)')
end
redis.call('HSET', KEYS[1], ARGV[1], encode(n))
return {1, n, redis.call('HINCRBY', KEYS[1], 'm:v', 1)}
