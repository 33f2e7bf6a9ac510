-- Take back jobs whose lease ran out (their worker died or hung): fence the old worker out and
-- queue them again at the front, or fail them when their attempts are used up.
-- Two passes, BullMQ-style, counted on Redis's clock: a job whose lease ran out is first only
-- suspected (the job's `stalled` field: fence and time); it is taken back by a later pass at least
-- confirm_ms on, if its worker has not renewed the lease (or reported progress) meanwhile. So after
-- an outage that every process lived through (Redis frozen, failed over, cut off) - every lease has
-- expired when Redis answers again, and reaps sent during the outage may run the moment it does -
-- live workers get confirm_ms to renew before anything is taken back, however long the outage was.
-- Also trims the ended-job sets to the retention time.
-- KEYS: active, waiting, failed, totals, completed, cancelled
-- ARGV: job_key_prefix, events_suffix, channel, retention_ms, max_events, limit, confirm_ms
-- Returns how many jobs were taken back
local now = now_ms()
local ttl = tonumber(ARGV[4])
local confirm = tonumber(ARGV[7])
for _, key in ipairs({KEYS[3], KEYS[5], KEYS[6]}) do  -- writes that shrink memory first (see extend.lua)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))

-- Whether the job's expired lease was already suspected by a pass at least `confirm` ms ago, in the
-- same attempt (fence); if not, it is suspected now.
local function confirmed(job_key)
  local fence = redis.call('HGET', job_key, 'fence') or ''
  local mark = redis.call('HGET', job_key, 'stalled')
  if mark then
    local sep = string.find(mark, ':', 1, true)
    if string.sub(mark, 1, sep - 1) == fence then
      return now - tonumber(string.sub(mark, sep + 1)) >= confirm
    end
  end
  if redis.call('EXISTS', job_key) == 0 then return true end  -- the record is gone: nothing to wait for
  redis.call('HSET', job_key, 'stalled', fence .. ':' .. now)
  return false
end

local taken = 0
for _, id in ipairs(expired) do
  local job_key = ARGV[1] .. id
  local events_key = job_key .. ARGV[2]
  if confirmed(job_key) then
    taken = taken + 1
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', job_key, 'stalled')
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
      emit(job_key, events_key, ARGV[3], {type = 'job_failed', jobId = id, status = 'failed', error = err,
           code = 'worker_lost'}, ttl, tonumber(ARGV[5]))
      webhook_record(job_key, id, 'job.failed', now, ttl)  -- _webhooks.lua
      retain(job_key, ttl, events_key)
    else
      redis.call('HINCRBY', job_key, 'fence', 1)
      local message = 'Waiting in the queue'
      redis.call('HSET', job_key, 'status', 'queued', 'progress', 0, 'message', message)
      redis.call('RPUSH', KEYS[2], id)
      redis.call('HINCRBY', KEYS[4], 'requeued', 1)
      emit(job_key, events_key, ARGV[3], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
           message = message}, ttl, tonumber(ARGV[5]))
    end
  end
end
return taken
