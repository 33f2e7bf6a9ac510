-- Complete several jobs of one worker and, in the same round trip, claim its next jobs (as claim.lua does).
-- Each job is settled on its own (its fence is checked, its writes and events are its own); one call
-- settles the jobs a worker finished while its last round trip was out, so Redis's per-call work
-- (the clock, the claim's reads) is paid once for all of them.
-- Each picture is already in the blob store (under a key of its attempt's fence): the record names it.
-- KEYS: active, completed, totals, waiting, delayed, paused, then five per job: the job, its events, the
--       picture's Redis key (Redis storage), the provider's recent run times (_run_times.lua), the photo's
--       Redis key (Redis storage)
-- ARGV: claim.lua's ten arguments (count, lease_ms, worker_id, job_key_prefix, events_suffix, channel,
--       retention_ms, max_events, blob_key_prefix, photo_budget), then seven per job: fence, picture key,
--       content type, image_url, provider, the picture's bytes with Redis storage ('' otherwise: the worker
--       put them in the blob store), '1' when the photo is in Redis (deleted here) or '0'
-- Returns {1 or 0 (no longer ours) per job, in order, then claim_jobs's answer}
local SHARED_KEYS, CLAIM_ARGS, JOB_KEYS, JOB_ARGS = 6, 10, 5, 7
local claim_keys = {KEYS[4], KEYS[1], KEYS[5], KEYS[6]}
local claim_args = {unpack(ARGV, 1, CLAIM_ARGS)}
local channel, ttl, max_events = claim_args[6], tonumber(claim_args[7]), tonumber(claim_args[8])
local now, now_us = clock()
local out = {}
for j = 0, (#KEYS - SHARED_KEYS) / JOB_KEYS - 1 do
  local kb, ab = SHARED_KEYS + j * JOB_KEYS, CLAIM_ARGS + j * JOB_ARGS
  local job_key, events_key = KEYS[kb + 1], KEYS[kb + 2]
  local job = redis.call('HMGET', job_key, 'fence', 'status', 'id', 'error', 'startedAt', 'webhook', 'seq')
  if job[1] ~= ARGV[ab + 1] or job[2] ~= 'processing' then
    out[#out + 1] = 0
  else
    local id = job[3]
    local seq = (tonumber(job[7]) or 0) + 1  -- the completion event's, written with the record (see emit)
    redis.call('ZREM', KEYS[1], id)  -- first: a write that shrinks memory, so a full Redis runs the rest
    if ARGV[ab + 6] ~= '' then redis.call('SET', KEYS[kb + 3], ARGV[ab + 6], 'PX', ttl) end
    redis.call('HSET', job_key, 'status', 'completed', 'progress', '100', 'message', 'Your picture is ready',
               'completedAt', now, 'completedAtUs', now_us, 'picture', ARGV[ab + 2], 'resultType', ARGV[ab + 3],
               'provider', ARGV[ab + 5], 'seq', seq)
    -- the photo: nothing reads it again (in another blob store the worker deletes it next); an earlier attempt's error
    if job[4] then redis.call('HDEL', job_key, 'photo', 'error', 'errorCode') else redis.call('HDEL', job_key, 'photo') end
    if ARGV[ab + 7] == '1' then redis.call('DEL', KEYS[kb + 5]) end
    redis.call('ZADD', KEYS[2], now, id)  -- trimmed to the retention time by stats and the reaper
    redis.call('HINCRBY', KEYS[3], 'completed', 1)
    record_run_time(KEYS[kb + 4], now, ttl, job[5])  -- for the queue's ETA (s2s/line.py)
    emit(job_key, events_key, channel, {type = 'job_completed', jobId = id, status = 'completed', progress = 100,
         result = {imageUrl = ARGV[ab + 4]}}, ttl, max_events, seq)
    webhook_record(job_key, id, 'job.completed', now, ttl, job[6] or false, tostring(seq))  -- _webhooks.lua
    retain(job_key, ttl, events_key)
    out[#out + 1] = 1
  end
end
for _, v in ipairs(claim_jobs(claim_keys, claim_args, now, now_us)) do out[#out + 1] = v end
return out
