-- Renew the leases of the jobs a worker holds; report those it no longer holds.
-- KEYS: active, workers, worker
-- ARGV: lease_ms, job_key_prefix, worker_id, worker_ttl_ms, worker info json, then id/fence pairs
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
local lost = {}
for i = 6, #ARGV, 2 do
  local id, fence = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. id, 'fence') == fence and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
