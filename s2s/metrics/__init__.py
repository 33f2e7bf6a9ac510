"""Metrics for Prometheus: one scrape of any API process sees the whole system.

No process keeps a number that a scrape would have to go and ask it for. Every
process adds its increments to cluster-wide counters in one Redis hash
(HINCRBY in a MULTI, batched with the heartbeat, never a round trip per job), so
a worker that dies takes at most its last unsent second with it and no total
ever goes down, as Prometheus counters must not. Job outcomes come from the
queue's own lifetime totals (kept by the Lua scripts, exact), queue depth and
live workers from the queue at scrape time, and each API process reports its
open sockets under a key that expires soon after the process is gone.

- :mod:`s2s.metrics.counters`: what a process counts, in memory, and the sample names;
- :mod:`s2s.metrics.store`: the cluster's counters and the API processes' gauges, in Redis;
- :mod:`s2s.metrics.exposition`: what one scrape shows, as Prometheus metric families.
"""
