-- Cancel a job that has not ended. A running job's worker is fenced out and told over the
-- control channel, so it aborts its upstream call.
-- KEYS: job, events, waiting, delayed, active, cancelled, totals
-- ARGV: channel, retention_ms, max_events, control_channel
-- Returns the status the job had ('' when unknown)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'queued' and status ~= 'processing' then return status end
local id = redis.call('HGET', KEYS[1], 'id')
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('LREM', KEYS[3], 0, id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'message', 'Cancelled', 'cancelledAt', now)
redis.call('ZADD', KEYS[6], now, id)
redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
emit(KEYS[1], KEYS[2], ARGV[1], {type = 'job_cancelled', jobId = id, status = 'cancelled'}, ttl, tonumber(ARGV[3]))
webhook_record(KEYS[1], id, 'job.cancelled', now, ttl)  -- _webhooks.lua
retain(KEYS[1], ttl, KEYS[2])  -- the photo keeps its own expiry (an operator may retry)
if status == 'processing' then redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'cancel', jobId = id})) end
return status
