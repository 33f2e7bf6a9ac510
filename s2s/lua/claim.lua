-- Claim up to `count` jobs for a worker (see claim_jobs in _lib.lua).
-- KEYS: waiting, active, delayed, paused
-- ARGV: count, lease_ms, worker_id, job_key_prefix, events_suffix, channel, retention_ms, max_events,
--       blob_key_prefix ('' when the photos are elsewhere), photo_budget
return claim_jobs(KEYS, ARGV)
