-- KEYS: job, waiting, idempotency, events
-- ARGV: job_id, idempotency entry ('' = no idempotency key: the request's fingerprint and the sealed
--       delete token, s2s/deletion.py; stored with ' <job id>' after it), retention_ms, channel, max_events,
--       then field/value pairs of the job hash (the photo is in the blob store: the hash names it; deleteHash,
--       and idemKey: the name of KEYS[3])
local idem = ARGV[2]
if idem ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {0, seen} end
end
local now, now_us = clock()
local fields = {'id', ARGV[1], 'status', 'queued', 'progress', 0, 'message', 'Waiting in the queue',
                'createdAt', now, 'createdAtUs', now_us, 'attempts', 0, 'fence', 0, 'seq', 0}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('LPUSH', KEYS[2], ARGV[1])
if idem ~= '' then
  redis.call('SET', KEYS[3], idem .. ' ' .. ARGV[1], 'PX', ARGV[3])
end
emit(KEYS[1], KEYS[4], ARGV[4], {type = 'job_progress', jobId = ARGV[1], status = 'queued', progress = 0,
     message = 'Waiting in the queue'}, tonumber(ARGV[3]), tonumber(ARGV[5]))
return {1, ARGV[1]}
