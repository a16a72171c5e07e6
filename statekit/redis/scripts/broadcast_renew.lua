-- Renew a broadcast job's lease if the caller still holds it.
-- KEYS: lease. ARGV: owner|token, lease_ms. -> 1 renewed | 0 not held
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
