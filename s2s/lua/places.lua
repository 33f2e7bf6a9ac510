-- Where some jobs stand in line, read at one instant (s2s/line.py). Claims RPOP: the list's last id is next.
-- KEYS: waiting, delayed, active, paused
-- ARGV: job_key_prefix, then job ids
-- Returns {now, paused (0/1), {elapsed ms of each running job}, then 5 values per id: status ('' unknown), seq,
--          position (1 = next, 0 = not in the list), due ms (-1 = not a delayed retry), message}
local now = now_ms()
local prefix = ARGV[1]
local out = {now, redis.call('EXISTS', KEYS[4]), {}}
local running = redis.call('ZRANGE', KEYS[3], 0, 999)
for _, id in ipairs(running) do
  local started = tonumber(redis.call('HGET', prefix .. id, 'startedAt'))
  if started then table.insert(out[3], math.max(0, now - started)) end
end
local queued = {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', prefix .. ARGV[i], 'status', 'seq', 'message')
  out[#out + 1] = f[1] or ''
  out[#out + 1] = tonumber(f[2]) or 0
  out[#out + 1] = 0
  out[#out + 1] = -1
  out[#out + 1] = f[3] or ''
  if f[1] == 'queued' then queued[#queued + 1] = i end
end
if #queued == 0 then return out end
local length = redis.call('LLEN', KEYS[1])
local index = nil
if #queued > 32 then  -- many: one pass over the list; a few: LPOS from the claiming end (RANK -1)
  local wanted = {}
  for _, i in ipairs(queued) do wanted[ARGV[i]] = true end
  index = {}
  for i, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if wanted[id] then index[id] = length - i + 1 end
  end
end
for _, i in ipairs(queued) do
  local at = 4 + (i - 2) * 5
  local position = nil
  if index then
    position = index[ARGV[i]]
  else
    local from_head = redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1)
    if from_head then position = length - from_head end
  end
  if position then
    out[at + 2] = position
  else
    local due = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if due then out[at + 3] = tonumber(due) end
  end
end
return out
