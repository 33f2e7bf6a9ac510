-- The outcome of one delivery attempt (s2s/webhooks/delivery.py), written only by the lease's holder.
-- KEYS: schedule, delivery, its log (LIST of JSON attempts), disabled URLs (HASH url -> JSON reason)
-- ARGV: msg, fence, outcome (delivered | retry | failed | disabled | skipped), HTTP status ('' none),
--       error ('' none), delay_ms before the next try (retry), body (kept for the next tries), max log entries
-- Returns 1, or 0 when the lease was lost (another worker holds it) or the delivery is gone
local state = redis.call('HMGET', KEYS[2], 'fence', 'expiresAt', 'url', 'jobId')
if state[1] ~= ARGV[2] then return 0 end
local now = now_ms()
local outcome = ARGV[3]
local attempt = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HINCRBY', KEYS[2], 'tries', 1)
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[2], 'body', ARGV[7]) end
local due = now + tonumber(ARGV[6])
if outcome == 'retry' and due > tonumber(state[2]) then outcome = 'failed' end  -- the job's retention is over
local entry = {attempt = attempt, at = now, outcome = outcome, status = tonumber(ARGV[4]) or cjson.null,
               error = ARGV[5] ~= '' and ARGV[5] or cjson.null, url = state[3]}
if outcome == 'retry' then entry['nextAt'] = due end
if redis.call('RPUSH', KEYS[3], cjson.encode(entry)) > tonumber(ARGV[8]) then
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[8]), -1)
end
redis.call('PEXPIREAT', KEYS[3], tonumber(state[2]))
if outcome == 'retry' then
  redis.call('HSET', KEYS[2], 'state', 'pending', 'nextAt', due)
  redis.call('ZADD', KEYS[1], due, ARGV[1])
else
  redis.call('HSET', KEYS[2], 'state', outcome)
  redis.call('HDEL', KEYS[2], 'nextAt')
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if outcome == 'disabled' then
  redis.call('HSET', KEYS[4], state[3], cjson.encode({at = now, status = tonumber(ARGV[4]), webhookId = ARGV[1],
                                                      jobId = state[4]}))
end
return 1
