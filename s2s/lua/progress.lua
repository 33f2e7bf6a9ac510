-- KEYS: job, events
-- ARGV: fence, percent, message, channel, retention_ms, max_events
local job = redis.call('HMGET', KEYS[1], 'fence', 'status', 'progress', 'id')
if job[1] ~= ARGV[1] or job[2] ~= 'processing' then
  return 0
end
-- first a write that cannot grow memory, so that a full Redis still records progress (see extend.lua);
-- a job that reports is not stalled
redis.call('HDEL', KEYS[1], 'stalled')
local percent = math.max(tonumber(job[3] or '0'), math.min(100, tonumber(ARGV[2])))
redis.call('HSET', KEYS[1], 'progress', percent, 'message', ARGV[3])
emit(KEYS[1], KEYS[2], ARGV[4], {type = 'job_progress', jobId = job[4], status = 'processing',
     progress = percent, message = ARGV[3]}, tonumber(ARGV[5]), tonumber(ARGV[6]))
return 1
