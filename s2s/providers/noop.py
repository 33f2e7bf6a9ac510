"""A provider that draws nothing: a small valid PNG after S2S_NOOP_DELAY_MS.

For benchmarks and fault drills: it measures the queue, not an image model; a
long delay simulates a slow upstream while still reporting progress, and
S2S_NOOP_FAIL_ATTEMPTS makes the first attempts of every job fail (retryably).
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from s2s.providers.base import GeneratedImage, GenerationRequest, ProviderError, Report

_REPORT_EVERY_S = 0.25  # about as often as a real upstream's progress, whatever the delay


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 200, 80)).save(buf, format="PNG")
    return buf.getvalue()


class NoopProvider:
    name = "noop"
    takes_photo = False  # the worker does not decode a photo it would never read (bench/queue_throughput.py)

    def __init__(self, *, delay_ms: int = 0, fail_attempts: int = 0):
        self.delay = delay_ms / 1000
        self.fail_attempts = fail_attempts
        self._png = _tiny_png()

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        if request.attempt <= self.fail_attempts:
            raise ProviderError(f"Simulated upstream failure on attempt {request.attempt}.", code="noop_failure")
        # a job shorter than half a report interval ends before its first report would be due: none
        steps = round(self.delay / _REPORT_EVERY_S)
        for step in range(steps):
            await report(10 + step * 90 // steps, f"Drawing (noop provider), step {step + 1} of {steps}")
            await asyncio.sleep(self.delay / steps)
        if steps == 0 and self.delay > 0:
            await asyncio.sleep(self.delay)
        return GeneratedImage(data=self._png, content_type="image/png")

    async def close(self) -> None:
        pass
