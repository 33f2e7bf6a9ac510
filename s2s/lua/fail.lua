-- A failed attempt: retry after a delay while attempts remain and the error is retryable, else fail.
-- KEYS: job, events, active, delayed, failed, totals
-- ARGV: fence, error, code, retryable (0/1), delay_ms, retention_ms, channel, max_events, refund (0/1),
--       max_refunds
-- Returns 0 (stale), 2 (retry scheduled) or 3 (failed for good)
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'processing' then
  return 0
end
local id = redis.call('HGET', KEYS[1], 'id')
local now = now_ms()
local ttl = tonumber(ARGV[6])
redis.call('ZREM', KEYS[3], id)
-- a refunded attempt (upstream rate limit) is given back, but only so many times: an upstream that
-- answers 429 for ever must not keep a job queued for ever
if ARGV[9] == '1' and redis.call('HINCRBY', KEYS[1], 'refunds', 1) <= tonumber(ARGV[10]) then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
local max_attempts = tonumber(redis.call('HGET', KEYS[1], 'maxAttempts'))
if ARGV[4] == '1' and attempts < max_attempts then
  local due = now + tonumber(ARGV[5])
  local message = 'Trying again shortly'
  redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', 0, 'message', message, 'retryAt', due,
             'error', ARGV[2], 'errorCode', ARGV[3])
  redis.call('ZADD', KEYS[4], due, id)
  redis.call('HINCRBY', KEYS[6], 'retried', 1)
  emit(KEYS[1], KEYS[2], ARGV[7], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
       message = message}, ttl, tonumber(ARGV[8]))
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'message', 'Failed', 'failedAt', now,
           'error', ARGV[2], 'errorCode', ARGV[3])
redis.call('ZADD', KEYS[5], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - ttl)
redis.call('HINCRBY', KEYS[6], 'failed', 1)
emit(KEYS[1], KEYS[2], ARGV[7], {type = 'job_failed', jobId = id, status = 'failed', error = ARGV[2],
     code = ARGV[3]}, ttl, tonumber(ARGV[8]))
webhook_record(KEYS[1], id, 'job.failed', now, ttl)  -- _webhooks.lua
retain(KEYS[1], ttl, KEYS[2])  -- the photo keeps its own expiry (an operator may retry)
return 3
