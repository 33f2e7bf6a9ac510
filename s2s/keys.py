"""Every Redis key and channel name s2s uses, built under one prefix.

Lua scripts receive these as KEYS; no other module spells a key.
"""

from __future__ import annotations

import hashlib

from attrs import frozen


@frozen
class Keys:
    prefix: str = "s2s"

    # --- queue structures ---
    @property
    def waiting(self) -> str:
        """LIST of job ids: LPUSH to enqueue, RPOP (oldest first) to claim."""
        return f"{self.prefix}:q:waiting"

    @property
    def active(self) -> str:
        """ZSET job id -> lease deadline (ms): the processing set of claimed jobs."""
        return f"{self.prefix}:q:active"

    @property
    def delayed(self) -> str:
        """ZSET job id -> time (ms) a retry becomes due."""
        return f"{self.prefix}:q:delayed"

    @property
    def completed(self) -> str:
        """ZSET job id -> completion time (ms), trimmed to the retention time."""
        return f"{self.prefix}:q:completed"

    @property
    def failed(self) -> str:
        """ZSET job id -> failure time (ms), trimmed to the retention time."""
        return f"{self.prefix}:q:failed"

    @property
    def cancelled(self) -> str:
        """ZSET job id -> cancellation time (ms), trimmed to the retention time."""
        return f"{self.prefix}:q:cancelled"

    @property
    def totals(self) -> str:
        """HASH of lifetime counters (completed, failed, retried, requeued...)."""
        return f"{self.prefix}:q:totals"

    @property
    def paused(self) -> str:
        """STRING present while the queue is paused."""
        return f"{self.prefix}:q:paused"

    @property
    def workers(self) -> str:
        """ZSET worker id -> last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """HASH describing one worker process (host, pid, concurrency, jobs in hand)."""
        return f"{self.prefix}:worker:{worker_id}"

    # --- one job ---
    def job(self, job_id: str) -> str:
        """HASH: the job's state, as GET /status shows it; its photo and picture are in the blob store
        (s2s/storage/), named by the fields ``photo`` and ``picture``."""
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """LIST of the job's event frames (JSON), bounded, for replay on subscribe."""
        return f"{self.prefix}:job:{job_id}:events"

    def blob(self, key: str) -> str:
        """STRING (with a TTL): one blob of the Redis blob store (s2s/storage/redis_store.py), e.g. jobs/<id>/photo."""
        return f"{self.prefix}:blob:{key}"

    @property
    def blob_sweep(self) -> str:
        """STRING (with a TTL) held by the worker sweeping the blob store's expired blobs this round."""
        return f"{self.prefix}:blob-sweep"

    def idempotency(self, client: str, key: str) -> str:
        """STRING: request fingerprint and job id of one client's ``Idempotency-Key``.

        Scoped to the client (:func:`s2s.admission.client_key`): the same key from two clients names two
        requests. The pair is hashed: a key may be 255 characters, and names no one in a key listing.
        """
        digest = hashlib.sha256(client.encode() + b"\0" + key.encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    # --- webhooks (s2s/webhooks/; the Lua in s2s/lua/_webhooks.lua builds the same names from the job key) ---
    def job_webhooks(self, job_id: str) -> str:
        """LIST of the job's webhook deliveries (their webhook-ids), oldest first."""
        return f"{self.prefix}:job:{job_id}:webhooks"

    @property
    def webhook_due(self) -> str:
        """ZSET webhook-id -> when its next attempt is due (ms); a leased delivery is pushed past its lease."""
        return f"{self.prefix}:webhooks:due"

    @property
    def webhook_prefix(self) -> str:
        return f"{self.prefix}:webhook:"

    def webhook(self, msg_id: str) -> str:
        """HASH: one delivery (job, event, URL, state, attempts, fence, the body once built), for the retention time."""
        return self.webhook_prefix + msg_id

    def webhook_log(self, msg_id: str) -> str:
        """LIST of JSON attempts of one delivery (attempt, time, outcome, status, error), bounded."""
        return self.webhook_prefix + msg_id + ":log"

    @property
    def webhook_disabled(self) -> str:
        """HASH URL -> JSON reason (time, status, webhook-id): URLs that answered 410 Gone get nothing more."""
        return f"{self.prefix}:webhooks:disabled"

    # --- API limits ---
    def submits(self, client: str) -> str:
        """ZSET submit token -> time (ms): one client's accepted submits in the last minute."""
        return f"{self.prefix}:submits:{client}"

    # --- upstream providers ---
    def rate_requests(self, provider: str) -> str:
        """ZSET request token -> start time (ms): the provider's calls in the last minute."""
        return f"{self.prefix}:rate:{provider}:requests"

    def rate_slots(self, provider: str) -> str:
        """ZSET slot token -> lease deadline (ms): the provider's calls in flight, dropped when not renewed."""
        return f"{self.prefix}:rate:{provider}:slots"

    def rate_pause(self, provider: str) -> str:
        """STRING present (with a TTL) while the provider asked us to back off (429 Retry-After)."""
        return f"{self.prefix}:rate:{provider}:pause"

    def run_times(self, provider: str) -> str:
        """LIST of the provider's latest completed run times (ms, newest first, capped): the queue's ETA."""
        return f"{self.prefix}:runtimes:{provider}"

    def provider_state(self, provider: str) -> str:
        """STRING (JSON reason, with a TTL) present while the provider refuses our credentials."""
        return f"{self.prefix}:provider:{provider}:state"

    # --- metrics (s2s/metrics/store.py) ---
    @property
    def metrics_counters(self) -> str:
        """HASH of cluster-wide counters (field: JSON [sample name, labels]) every process adds its increments to."""
        return f"{self.prefix}:metrics:counters"

    @property
    def metrics_processes(self) -> str:
        """SET of the API processes that report their own gauges (open sockets)."""
        return f"{self.prefix}:metrics:processes"

    def metrics_process(self, process_id: str) -> str:
        """STRING (JSON, with a TTL) of one API process's gauges; gone soon after the process is."""
        return f"{self.prefix}:metrics:process:{process_id}"

    # --- pub/sub ---
    @property
    def events_channel(self) -> str:
        """Channel every job event is published on (every API process listens)."""
        return f"{self.prefix}:events"

    @property
    def control_channel(self) -> str:
        """Channel for operator commands to workers (pause, cancel)."""
        return f"{self.prefix}:control"
