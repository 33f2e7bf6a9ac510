-- Delete a job and everything Redis keeps of it, whatever its state (DELETE /api/jobs/<id>).
-- A running job's worker is told over the control channel, so it aborts its upstream call; its
-- fenced writes (progress, complete, fail) find no record and write nothing. Live subscribers of a
-- job that had not ended hear job_cancelled (published only: its log goes with it).
-- Writes that shrink memory come first, so that a full store (maxmemory) still deletes.
-- The photo and picture are in the blob store: the caller removes them (s2s/web/delete.py).
-- KEYS: job, events, waiting, active, delayed, completed, failed, cancelled, totals,
--       idempotency entry (the job's idemKey; any absent key when it has none)
-- ARGV: channel, control_channel
-- Returns the status the job had ('' when unknown)
local job = redis.call('HMGET', KEYS[1], 'id', 'status', 'seq')
local id, status = job[1], job[2]
if not id then return '' end
redis.call('LREM', KEYS[3], 0, id)
for i = 4, 8 do redis.call('ZREM', KEYS[i], id) end
local entry = redis.call('GET', KEYS[10])
if entry and string.sub(entry, -(#id + 1)) == ' ' .. id then  -- the entry still names this job
  redis.call('DEL', KEYS[10])
end
webhook_forget(KEYS[1], id)  -- _webhooks.lua
redis.call('DEL', KEYS[1], KEYS[2])
if status == 'queued' or status == 'processing' then
  redis.call('PUBLISH', ARGV[1], cjson.encode({type = 'job_cancelled', jobId = id, status = 'cancelled',
                                               seq = tonumber(job[3] or '0') + 1}))
end
if status == 'processing' then redis.call('PUBLISH', ARGV[2], cjson.encode({type = 'cancel', jobId = id})) end
redis.call('HINCRBY', KEYS[9], 'deleted', 1)
return status
