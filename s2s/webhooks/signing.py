"""The Standard Webhooks v1 signature: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

Our own few lines, checked against the reference ``standardwebhooks`` package in the tests: the
package pulls in an HTTP client and parses headers on every call, and a worker signs every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: the base64-decoded part after the prefix."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def signature(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,`` signature per secret, space separated (rotation)."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return " ".join("v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of a delivery attempt; ``timestamp`` is the attempt's (seconds), as the spec asks."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secrets, msg_id, timestamp, body),
            "Content-Type": "application/json", "User-Agent": "s2s-webhooks/1"}
