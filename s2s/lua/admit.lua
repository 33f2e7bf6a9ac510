-- May a client submit a job now (s2s/admission.py)? A sliding window of accepted submits per
-- client, and a cap on waiting jobs.
-- KEYS: the client's submits (ZSET), the waiting list
-- ARGV: token ('' = only check), limit, window_ms, max_waiting
-- Returns {0, 'ok'}, {ms until a submit frees, 'rate_limited'} or {waiting count, 'queue_full'}.
local now = now_ms()
local limit, window, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if cap > 0 then
  local waiting = redis.call('LLEN', KEYS[2])
  if waiting >= cap then return {waiting, 'queue_full'} end
end
if limit > 0 then
  local wait = window_wait(KEYS[1], now, limit, window)
  if wait > 0 then return {wait, 'rate_limited'} end
  if ARGV[1] ~= '' then window_add(KEYS[1], now, window, ARGV[1]) end
end
return {0, 'ok'}
