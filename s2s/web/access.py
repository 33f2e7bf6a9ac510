"""Who may use the API: the CORS origin rule and the operator token, one copy each for REST and /ws."""

from __future__ import annotations

import hmac

from attrs import frozen


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """The CORS_ORIGINS rule: ``*`` allows every origin, else an exact match (a trailing slash aside)."""
    return "*" in allowed or origin.rstrip("/") in allowed


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one (or with another scheme)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return authorization[7:].strip() or None


@frozen
class Denied:
    """Why a caller is not an operator, as the error answer (REST status, code, sentence) says it."""

    status: int
    code: str
    message: str


def check_operator(expected: str | None, given: str | None, how: str) -> Denied | None:
    """None when ``given`` is S2S_ADMIN_TOKEN (``expected``); operator access is off while it is unset.

    ``how`` tells a caller without a token where to put one. The comparison takes
    the same time whatever the token, so a wrong guess tells nothing about the right one.
    """
    if not expected:
        return Denied(403, "operator_disabled", "Operator actions are disabled: S2S_ADMIN_TOKEN is not set.")
    if not given:
        return Denied(401, "unauthorized", f"This action needs an operator token ({how}).")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return Denied(403, "forbidden", "The operator token is wrong.")
    return None
