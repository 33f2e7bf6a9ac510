-- Renew the leases of the jobs a worker holds; report those it no longer holds.
-- KEYS: active, workers, worker
-- ARGV: lease_ms, job_key_prefix, worker_id, worker_ttl_ms, worker info json, then id/fence pairs
-- A renewal also clears the reaper's suspicion of the job (see reap.lua).
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
-- first a write that cannot grow memory: a full Redis (maxmemory, noeviction) refuses only a script's
-- first write that may, so the heartbeat goes on when the store is full (Redis 6.2 and 7+, Valkey)
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
local lost = {}
for i = 6, #ARGV, 2 do
  local id, fence = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. id, 'fence') == fence and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('HDEL', ARGV[2] .. id, 'stalled')
  else
    lost[#lost + 1] = id
  end
end
return lost
