-- Queue a failed or cancelled job again, with fresh attempts; its photo must still be kept.
-- KEYS: job, events, waiting, failed, cancelled
-- ARGV: channel, retention_ms, max_events, photo kept (1/0: the blob store, asked just before)
-- Returns the status the job had ('' when unknown, 'gone' when its photo expired)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'failed' and status ~= 'cancelled' then return status end
if ARGV[4] ~= '1' then return 'gone' end
local id = redis.call('HGET', KEYS[1], 'id')
local message = 'Waiting in the queue'
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', 0, 'message', message, 'attempts', 0)
redis.call('HDEL', KEYS[1], 'error', 'errorCode', 'failedAt', 'cancelledAt', 'retryAt')
redis.call('LPUSH', KEYS[3], id)
emit(KEYS[1], KEYS[2], ARGV[1], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
     message = message}, tonumber(ARGV[2]), tonumber(ARGV[3]))
return status
