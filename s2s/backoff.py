"""How long to wait before trying again: exponential, capped, and jittered where many retry at once.

The one schedule every retry loop uses: a job's next attempt (S2S_RETRY_BASE_MS),
a worker settling a job while Redis is away, the events subscriber reconnecting,
and the console (tui/) reconnecting to the API. Plain Python with no I/O, so the
console may import it.
"""

from __future__ import annotations

import random

from attrs import frozen


def equal_jitter(ceiling: float, rng: random.Random | None = None) -> float:
    """Half of ``ceiling`` fixed, half random: waiters that started together spread out, none waits longer."""
    return ceiling / 2 + (rng or random).random() * ceiling / 2


@frozen
class Backoff:
    """Wait ``initial`` after the first failure, ``factor`` times longer after each next one, at most ``maximum``.

    ``jitter``: :func:`equal_jitter` on each wait, for loops that many processes run against
    one server (a job's retries); a lone client can keep the plain schedule it shows its user.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: bool = False

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after ``failures`` failures in a row (1 for the first)."""
        try:
            ceiling = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        except OverflowError:  # a long outage: the ceiling was reached long ago
            ceiling = self.maximum
        return equal_jitter(ceiling, rng) if self.jitter else ceiling
