-- May a provider call go now (s2s/ratelimit.py)? A pause, calls in flight, requests per minute.
-- KEYS: requests (ZSET, sliding window), slots (ZSET token -> lease deadline), pause
-- ARGV: token, rpm, concurrency, lease_ms, window_ms
-- Returns {0, 'ok'} when the call may go (its token is recorded), else {ms to wait at most, reason}.
local now = now_ms()
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {paused, 'paused'} end
local rpm, concurrency = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, window = tonumber(ARGV[4]), tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {math.max(1, tonumber(first[2]) - now), 'busy'}
  end
end
if rpm > 0 then
  local wait = window_wait(KEYS[1], now, rpm, window)
  if wait > 0 then return {wait, 'per_minute'} end
  window_add(KEYS[1], now, window, ARGV[1])
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], lease)
end
return {0, 'ok'}
