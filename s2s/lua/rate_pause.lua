-- Pause every worker's calls to a provider (its Retry-After; s2s/ratelimit.py). Only ever
-- lengthens a pause another worker set.
-- KEYS: pause. ARGV: ms
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
