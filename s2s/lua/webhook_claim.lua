-- Lease up to `count` due webhook deliveries (s2s/webhooks/store.py): each is pushed lease_ms
-- into the future in the schedule and fenced, so a worker killed mid-delivery leaves it to another.
-- KEYS: schedule (ZSET msg -> due ms)
-- ARGV: count, lease_ms, delivery key prefix
-- Returns 9 values per delivery: msg, fence, jobId, event, url, at, attempts, tries, body ('' when not built)
local now = now_ms()
local out = {}
for _, msg in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  local key = ARGV[3] .. msg
  local d = redis.call('HMGET', key, 'jobId', 'event', 'url', 'at', 'attempts', 'tries', 'body', 'state')
  if not d[1] or d[8] ~= 'pending' then
    redis.call('ZREM', KEYS[1], msg)  -- expired with its job, or already settled
  else
    local fence = redis.call('HINCRBY', key, 'fence', 1)
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), msg)
    for _, v in ipairs({msg, fence, d[1], d[2], d[3], d[4], d[5], d[6], d[7] or ''}) do out[#out + 1] = v end
  end
end
return out
