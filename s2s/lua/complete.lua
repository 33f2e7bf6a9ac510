-- Complete a job and, in the same round trip, claim the worker's next jobs (as claim.lua does).
-- The picture is already in the blob store (under a key of this attempt's fence): the record names it.
-- KEYS: job, events, active, completed, totals, waiting, delayed, paused, the picture's Redis key (Redis storage),
--       the provider's recent run times (_run_times.lua), the photo's Redis key (Redis storage)
-- ARGV: fence, picture key, content type, image_url, provider, then claim.lua's ten arguments
--       (count, lease_ms, worker_id, job_key_prefix, events_suffix, channel, retention_ms, max_events,
--       blob_key_prefix, photo_budget),
--       then the picture's bytes with Redis storage ('' otherwise: the worker put them in the blob store),
--       then '1' when the photo is in Redis (deleted here, in the same round trip) or '0'
-- Returns {1 or 0 (no longer ours), then claim_jobs's answer}
local claim_keys = {KEYS[6], KEYS[3], KEYS[7], KEYS[8]}
local claim_args = {unpack(ARGV, 6, 15)}
local channel, ttl, max_events = claim_args[6], tonumber(claim_args[7]), tonumber(claim_args[8])
local job = redis.call('HMGET', KEYS[1], 'fence', 'status', 'id', 'error', 'startedAt', 'webhook', 'seq')
if job[1] ~= ARGV[1] or job[2] ~= 'processing' then
  local out = claim_jobs(claim_keys, claim_args)
  table.insert(out, 1, 0)
  return out
end
local id = job[3]
local seq = (tonumber(job[7]) or 0) + 1  -- the completion event's, written with the record (see emit)
local now, now_us = clock()
redis.call('ZREM', KEYS[3], id)  -- first: a write that shrinks memory, so a full Redis runs the rest
if ARGV[16] ~= '' then redis.call('SET', KEYS[9], ARGV[16], 'PX', ttl) end
redis.call('HSET', KEYS[1], 'status', 'completed', 'progress', 100, 'message', 'Your picture is ready',
           'completedAt', now, 'completedAtUs', now_us, 'picture', ARGV[2], 'resultType', ARGV[3],
           'provider', ARGV[5], 'seq', seq)
-- the photo: nothing reads it again (in another blob store the worker deletes it next); an earlier attempt's error
if job[4] then redis.call('HDEL', KEYS[1], 'photo', 'error', 'errorCode') else redis.call('HDEL', KEYS[1], 'photo') end
if ARGV[17] == '1' then redis.call('DEL', KEYS[11]) end
redis.call('ZADD', KEYS[4], now, id)  -- trimmed to the retention time by stats and the reaper
redis.call('HINCRBY', KEYS[5], 'completed', 1)
record_run_time(KEYS[10], now, ttl, job[5])  -- for the queue's ETA (s2s/line.py)
emit(KEYS[1], KEYS[2], channel, {type = 'job_completed', jobId = id, status = 'completed', progress = 100,
     result = {imageUrl = ARGV[4]}}, ttl, max_events, seq)
webhook_record(KEYS[1], id, 'job.completed', now, ttl, job[6] or false, tostring(seq))  -- _webhooks.lua
retain(KEYS[1], ttl, KEYS[2])
local out = claim_jobs(claim_keys, claim_args, now, now_us)
table.insert(out, 1, 1)
return out
