-- Recent run times per provider, for the queue's ETA (s2s/line.py); prepended to every script by s2s/scripts.py.
-- A capped list of the latest completed attempts' run times (claim to completion, ms), newest first.
local RUN_TIME_SAMPLE = 20

-- started: the job's startedAt as the caller read it (false or nil: not started)
local function record_run_time(list_key, now, ttl_ms, started)
  started = tonumber(started)
  if not started then return end
  redis.call('LPUSH', list_key, math.max(0, now - started))
  redis.call('LTRIM', list_key, 0, RUN_TIME_SAMPLE - 1)
  redis.call('PEXPIRE', list_key, ttl_ms)
end
