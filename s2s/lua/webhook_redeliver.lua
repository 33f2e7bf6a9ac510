-- The operator's Redeliver: a job's deliveries that ended (delivered, failed, disabled, skipped) are
-- due again now, with the same webhook-id and a fresh retry schedule; their URLs are enabled again.
-- KEYS: schedule, the job's deliveries (LIST of msg ids), disabled URLs
-- ARGV: delivery key prefix
-- Returns how many were scheduled again
local now = now_ms()
local n = 0
for _, msg in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[1] .. msg
  local d = redis.call('HMGET', key, 'state', 'url')
  if d[1] and d[1] ~= 'pending' then
    redis.call('HSET', key, 'state', 'pending', 'tries', 0)
    redis.call('HDEL', KEYS[3], d[2])
    redis.call('ZADD', KEYS[1], now, msg)
    n = n + 1
  end
end
return n
