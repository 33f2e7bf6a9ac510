-- A call to the image provider begins: one paid picture. Counted on the job (upstreamCalls) and in
-- the cluster's metrics at once, before the answer, so a worker killed mid-call still counted it.
-- KEYS: job, metrics counters
-- ARGV: fence, metrics field
-- Returns the job's upstream calls so far (0: the job is gone)
local fence = redis.call('HGET', KEYS[1], 'fence')  -- every job has one (enqueue.lua): none, no job
if not fence then return 0 end
if fence == ARGV[1] then
  -- a write that cannot grow memory first, so that a full store still counts (see extend.lua)
  redis.call('HDEL', KEYS[1], 'stalled')
end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return redis.call('HINCRBY', KEYS[1], 'upstreamCalls', 1)
