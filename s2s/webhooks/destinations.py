"""Where a webhook may go: https only, and never to loopback, private or link-local addresses
(a webhook must not be a way into the deployment's own network), except hosts the operator names
in S2S_WEBHOOK_HOSTS, where plain http is accepted too.

A URL is checked when a job names it (the submit's ``webhookUrl``) and again at each delivery,
against the addresses the connection really uses (:class:`GuardedResolver`): a name that
resolved to a public address at submit may point inside by the time of delivery (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from s2s.settings import Settings

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_S = 5.0


class Refused(Exception):
    """A destination webhooks may not go to: ``reason`` is a sentence for the submitter or the operator."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def public(address: str) -> bool:
    """Whether an IP address is on the public internet (not loopback, private, link-local, reserved...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def split(url: str, allowed_hosts: tuple[str, ...]) -> tuple[str, int, bool]:
    """(host, port, allowed explicitly) of a URL webhooks may be sent to, or :class:`Refused` saying why."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise Refused(f"must be a URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise Refused("must be an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not carry a user name or password")
    allowed = host in allowed_hosts
    if parts.scheme == "http" and not allowed:
        raise Refused("must be https:// (plain http only to hosts in S2S_WEBHOOK_HOSTS)")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not allowed and not public(host):
        raise Refused("points at a loopback, private or link-local address")
    return host, port or (443 if parts.scheme == "https" else 80), allowed


async def check(url: str, settings: Settings) -> None:
    """Raise :class:`Refused` unless ``url`` may receive webhooks now (its name resolved, every address public)."""
    host, port, allowed = split(url, settings.webhook_hosts)
    if allowed:
        return
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       RESOLVE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        raise Refused(f"its host {host!r} does not resolve") from None
    if not infos or any(not public(info[4][0]) for info in infos):
        raise Refused("resolves to a loopback, private or link-local address")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name that resolves to a non-public address (unless its host is allowed),
    so the address checked is the address connected to."""

    def __init__(self, allowed_hosts: tuple[str, ...]):
        self._inner = ThreadedResolver()
        self._allowed = allowed_hosts

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        found = await self._inner.resolve(host, port, family)
        if host.lower() not in self._allowed and any(not public(r["host"]) for r in found):
            # errno and text: aiohttp shows the strerror in the ClientConnectorError the attempt's log records
            raise OSError(errno.EACCES, f"{host} resolves to a loopback, private or link-local address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def configured_refusal(settings: Settings) -> str | None:
    """Why S2S_WEBHOOK_URL can never receive a webhook, from the URL alone (no DNS), or None: checked at
    start-up, so a deployment with a typo'd or plain-http URL stops at once instead of failing every delivery."""
    if not settings.webhook_url:
        return None
    try:
        split(settings.webhook_url, settings.webhook_hosts)
    except Refused as refused:
        return f"S2S_WEBHOOK_URL={settings.webhook_url!r}: {refused.reason}"
    return None


async def submit_refusal(url: str, settings: Settings) -> tuple[str, str] | None:
    """(code, reason) when a submit's ``webhookUrl`` is refused, None when it is taken."""
    if not settings.webhook_per_job or not settings.webhook_secret:
        return ("webhook_url_not_allowed", "is not accepted by this deployment (S2S_WEBHOOK_PER_JOB is off"
                + ("" if settings.webhook_secret else ", and no S2S_WEBHOOK_SECRET signs webhooks") + ")")
    try:
        await check(url, settings)
    except Refused as refused:
        return "invalid_webhook_url", refused.reason
    return None
