"""A worker's claim-ahead buffer: a few jobs claimed before a slot frees, so a freed slot starts one at once.

Without it a slot idles after each job for complete-and-claim's round trip (about 2 ms on a loaded
machine: 4% of a 50 ms job). With it, a slot whose provider call ended starts a buffered job at once,
and complete-and-claim refills the buffer instead.

A buffered job is held like a running one, and users see it as one: status ``processing``, message
"Starting", ``startedAt`` (and a job.started webhook) at its claim, a lease the heartbeat renews and a
fencing token. It makes no call of its own (none upstream) until a slot takes it. It leaves the buffer
by starting in a freed slot; dropped on an operator's cancel or a lost lease (it is no longer ours); or
handed back to the front of the queue with ``queue.release`` (no attempt used) when the worker drains
or when it waited past :data:`MAX_WAIT_S`.

The buffer is only as deep as slots are likely to free within :data:`WAIT_BUDGET_MS`: with ``slots``
running jobs of about D ms, one frees every D/slots ms, so the k-th buffered job waits about
k * D / slots. Jobs of seconds (a real image provider) keep it empty: nothing is claimed before a slot
is free; until a first job has run, nothing is claimed ahead either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from s2s.claims import Claim
from s2s.worker_chores import quiet

log = logging.getLogger("s2s.worker")

#: the longest a buffered job is expected to wait for a slot: the buffer is as deep as that allows
WAIT_BUDGET_MS = 5.0
#: a buffered job still waiting after this (slots busier than expected) goes back to the queue
MAX_WAIT_S = 1.0
_SMOOTHING = 0.2  # weight of the latest run time in the running estimate


def auto_limit(concurrency: int) -> int:
    """S2S_WORKER_CLAIM_AHEAD unset: a tenth of the slots, at least one."""
    return max(1, concurrency // 10)


class ClaimAhead:
    """The jobs a worker holds for slots not yet free, oldest first (see the module's docstring)."""

    def __init__(self, limit: int | None, slots: int, release: Callable[[Claim], asyncio.Future],
                 on_release: Callable[[], None]):
        self.limit = auto_limit(slots) if limit is None else limit
        self.slots = slots
        self._release = release  # queue.release_soon: back to the front of the queue, attempt not counted
        self._on_release = on_release  # counted in the worker's metrics
        self._held: dict[str, tuple[Claim, float]] = {}  # job id -> (claim, when buffered); in claim order
        self._asked = 0  # claims asked for the buffer whose answer has not come
        self._run_ms: float | None = None  # recent jobs' run time, smoothed

    def __len__(self) -> int:
        return len(self._held)

    def note_run(self, seconds: float) -> None:
        """A job's provider call ended after ``seconds``: the estimate the depth follows."""
        ms = seconds * 1000
        self._run_ms = ms if self._run_ms is None else self._run_ms + _SMOOTHING * (ms - self._run_ms)

    def depth(self) -> int:
        """How many jobs the buffer should hold now."""
        if self.limit <= 0 or self._run_ms is None:
            return 0
        if self._run_ms * self.limit <= WAIT_BUDGET_MS * self.slots:
            return self.limit
        return int(WAIT_BUDGET_MS * self.slots / self._run_ms)

    def ask(self) -> int:
        """How many more jobs to claim for the buffer now; pair with :meth:`answered`."""
        wanted = max(0, self.depth() - len(self._held) - self._asked)
        self._asked += wanted
        return wanted

    def answered(self, asked: int) -> None:
        self._asked -= asked

    def put(self, claim: Claim) -> None:
        self._held[claim.job_id] = (claim, time.monotonic())

    def take(self) -> Claim | None:
        """The oldest buffered job, for a freed slot (None: the buffer is empty)."""
        for job_id in self._held:
            return self._held.pop(job_id)[0]
        return None

    def drop(self, job_id: str) -> bool:
        """Forget a buffered job that is ours no more (cancelled, lease lost); False if not buffered."""
        return self._held.pop(job_id, None) is not None

    def claims(self) -> list[Claim]:
        """The buffered jobs, for the heartbeat to renew their leases."""
        return [claim for claim, _ in self._held.values()]

    def hand_back(self, claim: Claim) -> None:
        """A job not begun (no upstream call, no other call) back to the front of the queue at once."""
        self._release(claim).add_done_callback(quiet)
        self._on_release()
        log.info("job handed back unstarted", extra={"job": claim.job_id})

    def hand_back_all(self) -> int:
        """Drain or shutdown: every buffered job back to the queue at once; returns how many."""
        held, self._held = self._held, {}
        for claim, _ in held.values():
            self.hand_back(claim)
        return len(held)

    def hand_back_overdue(self) -> int:
        """Jobs buffered longer than :data:`MAX_WAIT_S` back to the queue; returns how many."""
        since = time.monotonic() - MAX_WAIT_S
        late = [job_id for job_id, (_, at) in self._held.items() if at < since]
        for job_id in late:
            self.hand_back(self._held.pop(job_id)[0])
        return len(late)
