"""Jobs a worker finished together, settled by one complete.lua call (see s2s.scripts.Pipeliner.merged).

Each job is still settled on its own inside the script (its fence checked, its record, events and
stats written), but the call's own work in Redis (the clock, the claim's reads, the script's setup)
and its packing in the worker are paid once for every job that finished while the lane's last round
trip was out. The jobs they claim next are shared out in the order the completions were made, each
as many as it asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from s2s import scripts
from s2s.claims import CLAIM_FIELDS, CLAIM_HEAD, ClaimBatch, parse_claims


class Completions:
    """complete.lua's calls of one worker (one set of claim arguments); merged in a pipeline by identity."""

    first = False  # in the pipeline where its last call was made: nothing of its jobs comes after

    @attrs.frozen
    class Item:
        keys: tuple  # the job, its events, the picture's Redis key, the run times, the photo's Redis key
        args: tuple  # fence, picture key, content type, image URL, provider, picture bytes or '', photo in Redis
        count: int  # next jobs to claim for this one

    def __init__(self, keys: Sequence[str], claim_args: Sequence[Any]):
        """keys: active, completed, totals, waiting, delayed, paused; claim_args: claim.lua's, less the count."""
        self._keys = tuple(keys)
        self._claim_args = list(claim_args)

    def command(self, items: list[Completions.Item]) -> tuple:
        keys, args = list(self._keys), [sum(item.count for item in items), *self._claim_args]
        for item in items:
            keys += item.keys
            args += item.args
        return scripts.evalsha("complete", keys, args)

    def split(self, reply: list, items: list[Completions.Item]) -> list[tuple[bool, ClaimBatch]]:
        """Each completion's (still ours, its share of the claimed jobs)."""
        n = len(items)
        head, claimed = reply[n:n + CLAIM_HEAD], reply[n + CLAIM_HEAD:]
        out, at = [], 0
        for ok, item in zip(reply[:n], items, strict=True):
            share = claimed[at * CLAIM_FIELDS:(at + item.count) * CLAIM_FIELDS]
            at += item.count
            out.append((bool(ok), parse_claims([*head, *share])))
        return out
