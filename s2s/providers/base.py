"""What every image provider is: an async call from a request to an image.

A provider reports its real steps through ``report(percent, message)`` and
raises :class:`ProviderError` for failures; the worker owns retries, leases and
bookkeeping, so a provider stays a thin client of its upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Protocol

from attrs import frozen

from s2s.catalog import Kind, Style, Theme

#: ``await report(percent, message)``: percent 0-100, message for a person.
Report = Callable[[int, str], Awaitable[None]]

#: Set by the worker around one job's ``generate``: called when the paid upstream request itself
#: begins (after any wait for a rate-limit slot). A draining worker waits for such calls and hands
#: back jobs whose call had not begun. Providers that wait first say so with ``announces_calls``;
#: for the others the call begins with ``generate``.
call_begins: ContextVar[Callable[[], None] | None] = ContextVar("call_begins", default=None)


def upstream_call_begins() -> None:
    hook = call_begins.get()
    if hook is not None:
        hook()


@frozen
class GenerationRequest:
    job_id: str
    hero_name: str
    theme: Theme
    style: Style
    kind: Kind
    photo: bytes
    photo_content_type: str  # image/jpeg, image/png or image/webp
    attempt: int = 1


@frozen
class GeneratedImage:
    data: bytes
    content_type: str


class ProviderError(Exception):
    """An upstream failure, with what the worker needs to decide what next.

    ``retryable`` failures go back to the queue with backoff (``retry_after``
    seconds when the upstream said so); others end the job at once with
    ``message``, a sentence a parent can read. ``detail`` is for operators (the
    upstream's status, code and request id), never shown to a parent; ``status``
    is the HTTP status of the upstream's answer, if there was one (for metrics).
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None,
                 code: str = "provider_error", detail: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code
        self.detail = detail
        self.status = status


class Provider(Protocol):
    name: str

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage: ...

    async def close(self) -> None: ...
