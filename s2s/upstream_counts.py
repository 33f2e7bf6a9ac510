"""Upstream calls that began together, counted by one upstream.lua call (see s2s.scripts.Pipeliner.merged).

Each job's count is its own (the job's upstreamCalls), the metrics counter rises by all of them at once,
and the script's own work in Redis is paid once for every job whose call began while the lane's last
round trip was out. The merged call runs where the first of them was made (``first``): each count still
runs before anything its job did after its call began, its completion included.
"""

from __future__ import annotations

from s2s import scripts


class UpstreamCounts:
    """upstream.lua's calls for one metrics counter field; merged in a pipeline by identity."""

    first = True  # in the pipeline where its first call was made (see scripts._assemble)

    def __init__(self, metrics_key: str, metrics_field: str):
        self._metrics_key = metrics_key
        self._field = metrics_field

    def command(self, items: list[tuple[str, int]]) -> tuple:
        """items: (job key, fence) per call that began."""
        keys, fences = zip(*items, strict=True)
        return scripts.evalsha("upstream", (self._metrics_key, *keys), (self._field, *fences))

    def split(self, reply: list, items: list) -> list[int]:
        """Each job's upstream calls so far (0: the job is gone)."""
        if len(reply) != len(items):
            raise ValueError(f"upstream.lua answered {len(reply)} counts for {len(items)} calls")
        return [int(n) for n in reply]
