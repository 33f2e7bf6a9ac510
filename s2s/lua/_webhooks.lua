-- Webhooks (s2s/webhooks/), shared by the scripts that end a job (prepended by s2s/scripts.py, before
-- _lib.lua, whose claim_jobs calls webhook_started).
-- A job with a destination (its `webhook` field, set at submit) has its delivery recorded by the
-- same script that ends it, so no crash between the two can lose it. Names as in s2s/keys.py
-- (webhook_due, webhook, webhook_log, job_webhooks), built from the job key <prefix>:job:<id>.
local function webhook_names(job_key, id)
  local prefix = string.sub(job_key, 1, #job_key - #id - 5)
  return prefix .. ':webhooks:due', prefix .. ':webhook:', job_key .. ':webhooks'
end

-- Record the delivery of `event` ('job.completed', ...), due now, kept for the job's retention.
-- Its id (the webhook-id header) is the job's event's: stable across retries and redeliveries.
-- With `url` and `seq` (the job's webhook field and its latest event's seq, as the caller read them) no
-- read of the job is made here.
local function webhook_record(job_key, id, event, now, ttl_ms, url, seq)
  if url == nil then
    local f = redis.call('HMGET', job_key, 'webhook', 'seq')
    url, seq = f[1], f[2]
  end
  if not url then return end
  local due, prefix, list = webhook_names(job_key, id)
  -- a digest, not the id: a receiver's or proxy's logs of webhook-ids hold no key to a job
  local msg = 'msg_' .. string.sub(redis.sha1hex(id .. '.' .. (seq or '0')), 1, 32)
  redis.call('HSET', prefix .. msg, 'jobId', id, 'event', event, 'url', url, 'at', now, 'state', 'pending',
             'attempts', 0, 'tries', 0, 'fence', 0, 'expiresAt', now + ttl_ms)
  redis.call('PEXPIRE', prefix .. msg, ttl_ms)
  redis.call('ZADD', due, now, msg)
  redis.call('RPUSH', list, msg)
  redis.call('PEXPIRE', list, ttl_ms)
end

-- A claimed job whose submit asked for job.started too (S2S_WEBHOOK_STARTED): one per attempt.
-- started, url: the job's webhookStarted and webhook fields; seq: its start event's.
local function webhook_started(job_key, id, now, ttl_ms, started, url, seq)
  if started then webhook_record(job_key, id, 'job.started', now, ttl_ms, url or false, tostring(seq)) end
end

-- A deleted job: its deliveries, pending or not, go with it.
local function webhook_forget(job_key, id)
  local due, prefix, list = webhook_names(job_key, id)
  for _, msg in ipairs(redis.call('LRANGE', list, 0, -1)) do
    redis.call('ZREM', due, msg)
    redis.call('DEL', prefix .. msg, prefix .. msg .. ':log')
  end
  redis.call('DEL', list)
end
