-- One consistent snapshot of the queue (a script runs atomically, so no job is counted twice).
-- KEYS: waiting, active, delayed, completed, failed, cancelled, paused, totals
-- ARGV: retention_ms
local now = now_ms()
local horizon = now - tonumber(ARGV[1])
for i = 4, 6 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', horizon) end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
        redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[6]),
        redis.call('EXISTS', KEYS[7]), redis.call('HGETALL', KEYS[8])}
