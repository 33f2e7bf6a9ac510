-- Recent run times per provider, for the queue's ETA (s2s/line.py); prepended to the scripts that use it
-- by s2s/scripts.py. A list of the latest completed attempts' run times (claim to completion, ms), newest
-- first; readers take the first RUN_TIME_SAMPLE (s2s.line.RUN_TIME_SAMPLE). It is trimmed back to that
-- when it has twice as many, so a completion pays for a push and its expiry, and a trim only now and then.
local RUN_TIME_SAMPLE = 20

-- started: the job's startedAt as the caller read it (false or nil: not started)
local function record_run_time(list_key, now, ttl_ms, started)
  started = tonumber(started)
  if not started then return end
  local length = redis.call('LPUSH', list_key, math.max(0, now - started))
  if length > 2 * RUN_TIME_SAMPLE then redis.call('LTRIM', list_key, 0, RUN_TIME_SAMPLE - 1) end
  redis.call('PEXPIRE', list_key, ttl_ms)
end
