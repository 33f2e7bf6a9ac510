-- Queue a failed or cancelled job again, with fresh attempts; its photo must still be kept.
-- KEYS: job, events, input, waiting, failed, cancelled
-- ARGV: channel, retention_ms, max_events
-- Returns the status the job had ('' when unknown, 'gone' when its photo expired)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'failed' and status ~= 'cancelled' then return status end
if redis.call('EXISTS', KEYS[3]) == 0 then return 'gone' end
local id = redis.call('HGET', KEYS[1], 'id')
local message = 'Waiting in the queue'
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[3])
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', KEYS[6], id)
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', 0, 'message', message, 'attempts', 0)
redis.call('HDEL', KEYS[1], 'error', 'errorCode', 'failedAt', 'cancelledAt', 'retryAt')
redis.call('LPUSH', KEYS[4], id)
emit(KEYS[1], KEYS[2], ARGV[1], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
     message = message}, tonumber(ARGV[2]), tonumber(ARGV[3]))
return status
