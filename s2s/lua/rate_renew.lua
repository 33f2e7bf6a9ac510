-- Renew a provider call's slot (s2s/ratelimit.py). The call is still running, so the slot is
-- (re)taken even if it lapsed.
-- KEYS: slots. ARGV: token, lease_ms
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
