-- Hand a job back at shutdown: it goes to the front of the queue and the attempt is not counted.
-- KEYS: job, events, active, waiting
-- ARGV: fence, channel, retention_ms, max_events
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'processing' then
  return 0
end
local id = redis.call('HGET', KEYS[1], 'id')
local message = 'Waiting in the queue'
redis.call('ZREM', KEYS[3], id)
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', 0, 'message', message)
redis.call('RPUSH', KEYS[4], id)
emit(KEYS[1], KEYS[2], ARGV[2], {type = 'job_progress', jobId = id, status = 'queued', progress = 0,
     message = message}, tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
