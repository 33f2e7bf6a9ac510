-- Calls to the image provider begin: one paid picture each. Counted on the job (upstreamCalls) and in
-- the cluster's metrics at once, before the answer, so a worker killed mid-call still counted it.
-- One call counts the calls of several jobs that began while the lane's last round trip was out
-- (s2s/upstream_counts.py).
-- KEYS: metrics counters, then each job
-- ARGV: metrics field, then each job's fence
-- Returns each job's upstream calls so far, in order (0: the job is gone)
local fences = {}
for i = 2, #KEYS do
  fences[i] = redis.call('HGET', KEYS[i], 'fence')  -- every job has one (enqueue.lua): none, no job
end
for i = 2, #KEYS do
  -- writes that cannot grow memory first, so that a full store still counts (see extend.lua)
  if fences[i] and fences[i] == ARGV[i] then redis.call('HDEL', KEYS[i], 'stalled') end
end
local out, counted = {}, 0
for i = 2, #KEYS do
  if fences[i] then
    counted = counted + 1
    out[#out + 1] = redis.call('HINCRBY', KEYS[i], 'upstreamCalls', 1)
  else
    out[#out + 1] = 0
  end
end
if counted > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], counted) end
return out
