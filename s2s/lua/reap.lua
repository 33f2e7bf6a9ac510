-- Take back jobs whose lease ran out (their worker died or hung): fence the old worker out and
-- queue them again at the front, or fail them when their attempts are used up.
-- Also trims the ended-job sets to the retention time.
-- KEYS: active, waiting, failed, totals, completed, cancelled
-- ARGV: job_key_prefix, events_suffix, input_suffix, channel, retention_ms, max_events, limit
local now = now_ms()
local ttl = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, id in ipairs(expired) do
  local job_key = ARGV[1] .. id
  local events_key = job_key .. ARGV[2]
  redis.call('ZREM', KEYS[1], id)
  local attempts = tonumber(redis.call('HGET', job_key, 'attempts') or '0')
  local max_attempts = tonumber(redis.call('HGET', job_key, 'maxAttempts') or '1')
  if redis.call('EXISTS', job_key) == 0 then
    -- the record is gone (deleted by hand): nothing left to run
  elseif attempts >= max_attempts then
    redis.call('HINCRBY', job_key, 'fence', 1)
    local err = 'The picture could not be made: the worker making it stopped responding.'
    redis.call('HSET', job_key, 'status', 'failed', 'message', 'Failed', 'failedAt', now,
               'error', err, 'errorCode', 'worker_lost')
    redis.call('ZADD', KEYS[3], now, id)
    redis.call('HINCRBY', KEYS[4], 'failed', 1)
    emit(job_key, events_key, ARGV[4], {type = 'job_failed', jobId = id, status = 'failed', error = err,
         code = 'worker_lost'}, ttl, tonumber(ARGV[6]))
    retain(job_key, ttl, job_key .. ARGV[3], events_key)
  else
    redis.call('HINCRBY', job_key, 'fence', 1)
    local message = 'Waiting in the queue'
    redis.call('HSET', job_key, 'status', 'queued', 'progress', 0, 'message', message)
    redis.call('RPUSH', KEYS[2], id)
    redis.call('HINCRBY', KEYS[4], 'requeued', 1)
    emit(job_key, events_key, ARGV[4], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
         message = message}, ttl, tonumber(ARGV[6]))
  end
end
for _, key in ipairs({KEYS[3], KEYS[5], KEYS[6]}) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
end
return #expired
