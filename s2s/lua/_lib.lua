-- Shared by every script (prepended by s2s/scripts.py).
-- Redis's clock: milliseconds (a number) and microseconds (an exact decimal string, for latency
-- figures: a Lua number would round it).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t[1] .. string.format('%06d', tonumber(t[2]))
end

local function now_ms()
  return (clock())
end

-- Append an event frame to the job's bounded log and publish it; seq rises by one per event.
-- The log's lifetime is set when it starts and again when the job ends (retain).
-- seq: the event's seq when the caller wrote it already (its HSET set the job's seq to it), else counted here.
local function emit(job_key, events_key, channel, frame, ttl_ms, max_events, seq)
  frame['seq'] = seq or redis.call('HINCRBY', job_key, 'seq', 1)
  local data = cjson.encode(frame)
  local length = redis.call('RPUSH', events_key, data)
  if length == 1 then
    redis.call('PEXPIRE', events_key, ttl_ms)
  elseif length > max_events then
    redis.call('LTRIM', events_key, -max_events, -1)
  end
  redis.call('PUBLISH', channel, data)
  return frame['seq']
end

-- A terminal state: keep the job and its events for the retention time (its blobs carry their own expiry).
local function retain(job_key, ttl_ms, ...)
  redis.call('PEXPIRE', job_key, ttl_ms)
  for _, k in ipairs({...}) do redis.call('PEXPIRE', k, ttl_ms) end
end

-- Move up to `count` jobs from the waiting list into the processing set, each with a lease and a
-- new fencing token; first promote retries whose delay has passed. Shared by claim and complete.
-- k: {waiting, active, delayed, paused}; a: {count, lease_ms, worker_id, job_key_prefix, events_suffix,
--    channel, retention_ms, max_events, blob_key_prefix, photo_budget}
-- With a blob key prefix (the photos are in this Redis) each job's photo comes along, while the photos
-- so far fit in photo_budget bytes: a job starts without another round trip (false: the worker reads it).
-- now, now_us: Redis's clock if the caller read it already (else read here).
-- Returns {paused(0/1), next_delayed_ms or -1, now, then 10 values per claimed job}
local function claim_jobs(k, a, now, now_us)
  if not now then now, now_us = clock() end
  local nxt = redis.call('ZRANGE', k[3], 0, 0, 'WITHSCORES')
  if nxt[2] and tonumber(nxt[2]) <= now then  -- retries are due: promote them, then look again
    local due = redis.call('ZRANGEBYSCORE', k[3], '-inf', now, 'LIMIT', 0, 1000)
    for _, id in ipairs(due) do
      redis.call('ZREM', k[3], id)
      redis.call('RPUSH', k[1], id)
    end
    nxt = redis.call('ZRANGE', k[3], 0, 0, 'WITHSCORES')
  end
  local next_due = -1
  if nxt[2] then next_due = tonumber(nxt[2]) end
  if redis.call('EXISTS', k[4]) == 1 then return {1, next_due, now} end
  local out = {0, next_due, now}
  if tonumber(a[1]) < 1 then return out end
  local ids = redis.call('RPOP', k[1], tonumber(a[1]))
  if not ids then return out end
  local deadline = now + tonumber(a[2])
  local blobs, budget = a[9], tonumber(a[10])
  for _, id in ipairs(ids) do
    local job_key = a[4] .. id
    local f = redis.call('HMGET', job_key, 'heroName', 'themeId', 'styleKey', 'kind', 'inputType', 'maxAttempts',
                         'status', 'fence', 'attempts', 'retryAt', 'photo', 'webhookStarted', 'webhook', 'seq')
    if f[7] == 'queued' then
      local fence = tonumber(f[8]) + 1
      local attempts = tonumber(f[9]) + 1
      local seq = (tonumber(f[14]) or 0) + 1  -- the start event's, written with the rest (see emit)
      redis.call('HSET', job_key, 'status', 'processing', 'progress', 0, 'message', 'Starting', 'fence', fence,
                 'attempts', attempts, 'startedAt', now, 'startedAtUs', now_us, 'worker', a[3], 'seq', seq)
      if f[10] then redis.call('HDEL', job_key, 'retryAt') end
      redis.call('ZADD', k[2], deadline, id)
      emit(job_key, job_key .. a[5], a[6], {type = 'job_progress', jobId = id, status = 'processing',
           progress = 0, message = 'Starting'}, tonumber(a[7]), tonumber(a[8]), seq)
      webhook_started(job_key, id, now, tonumber(a[7]), f[12], f[13], seq)  -- _webhooks.lua
      out[#out + 1] = id
      out[#out + 1] = fence
      out[#out + 1] = attempts
      for i = 1, 6 do out[#out + 1] = f[i] end
      local photo = false
      if blobs ~= '' and f[11] and budget > 0 then  -- one read, the size checked after it (photos are small)
        photo = redis.call('GET', blobs .. f[11])
        if photo and #photo > 0 and #photo <= budget then budget = budget - #photo else photo = false end
      end
      out[#out + 1] = photo
    end
  end
  return out
end

-- A sliding window over a ZSET of tokens scored by their time (ms): at most `limit` in any
-- `window_ms`. Returns 0 when one more fits, else the ms until the oldest leaves the window.
-- Takes nothing; window_add records a token.
local function window_wait(key, now, limit, window_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window_ms - now)
  end
  return 0
end

local function window_add(key, now, window_ms, token)
  redis.call('ZADD', key, now, token)
  redis.call('PEXPIRE', key, window_ms)
end
