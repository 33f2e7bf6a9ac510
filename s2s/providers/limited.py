"""A provider behind its account's shared limits (:mod:`s2s.ratelimit`).

Every upstream call first takes a slot, so ten workers keep to one account's
requests per minute and calls in flight. The wait happens inside the running
attempt, which the heartbeat keeps leased, so it costs no attempt; cancelling the
job ends the wait. A 429 with Retry-After pauses every worker, not just this job.
"""

from __future__ import annotations

from s2s.providers.base import GeneratedImage, GenerationRequest, Provider, ProviderError, Report, upstream_call_begins
from s2s.providers.failures import RATE_LIMITED
from s2s.ratelimit import BUSY, PAUSED, RateLimiter

_WAITING = {
    PAUSED: "Waiting: the picture service asked us to slow down",
    BUSY: "Waiting for a free place at the picture service",
}
_WAITING_DEFAULT = "Waiting for our turn at the picture service"


class RateLimitedProvider:
    def __init__(self, inner: Provider, limiter: RateLimiter):
        self.inner = inner
        self.limiter = limiter
        self.name = inner.name
        self.announces_calls = True  # the call begins once a slot is ours (upstream_call_begins)

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        async def waiting(reason: str) -> None:
            await report(1, _WAITING.get(reason, _WAITING_DEFAULT))

        async with self.limiter.slot(on_wait=waiting):
            upstream_call_begins()
            try:
                return await self.inner.generate(request, report)
            except ProviderError as exc:
                if exc.code == RATE_LIMITED and exc.retry_after:
                    await self.limiter.pause(exc.retry_after)
                raise

    async def close(self) -> None:
        await self.inner.close()
