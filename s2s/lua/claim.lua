-- Claim up to `count` jobs for a worker (see claim_jobs in _lib.lua).
-- KEYS: waiting, active, delayed, paused
-- ARGV: count, lease_ms, worker_id, job_key_prefix, events_suffix, channel, retention_ms, max_events
return claim_jobs(KEYS, ARGV)
