-- KEYS: job, input, waiting, idempotency, events
-- ARGV: job_id, photo, fingerprint ('' = no idempotency key), retention_ms, channel, max_events,
--       then field/value pairs of the job hash
local idem = ARGV[3]
if idem ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {0, seen} end
end
local now, now_us = clock()
local fields = {'id', ARGV[1], 'status', 'queued', 'progress', 0, 'message', 'Waiting in the queue',
                'createdAt', now, 'createdAtUs', now_us, 'attempts', 0, 'fence', 0, 'seq', 0}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[1])
if idem ~= '' then
  redis.call('SET', KEYS[4], idem .. ' ' .. ARGV[1], 'PX', ARGV[4])
end
emit(KEYS[1], KEYS[5], ARGV[5], {type = 'job_progress', jobId = ARGV[1], status = 'queued', progress = 0,
     message = 'Waiting in the queue'}, tonumber(ARGV[4]), tonumber(ARGV[6]))
return {1, ARGV[1]}
