"""HMAC-SHA256 signatures, shared by incoming webhooks and outbound notifications.

One scheme both ways, so a receiver written for Treadle's notifications can also sign
calls to Treadle's webhooks with the same code:

    X-Treadle-Timestamp: <unix seconds>
    X-Treadle-Signature: sha256=<hex of HMAC-SHA256(key, f"{timestamp}.".encode() + body)>

The timestamp is inside the signed bytes so a captured request cannot be replayed
later with a fresh timestamp; `verify` then refuses timestamps more than `tolerance`
seconds away from now. Every comparison of secret material is constant-time
(`hmac.compare_digest`), and no message ever contains the expected value.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ..errors import (
    SignatureError,
    )

TIMESTAMP_HEADER = "X-Treadle-Timestamp"
SIGNATURE_HEADER = "X-Treadle-Signature"
PREFIX = "sha256="
DEFAULT_TOLERANCE = 300.0  # seconds either way; covers clock skew and a few slow retries

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # whole seconds; anything longer is no timestamp


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Treadle-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return PREFIX + _digest(secret, str(int(timestamp)), body)


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    """Both headers of a call signed at `now` (seconds since the epoch, e.g. time.time())."""
    timestamp = int(now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, body, timestamp)}


def _shown(value: str, limit: int = 40) -> str:
    # the value came from whoever sent the request: quote it and keep it short
    return repr(value if len(value) <= limit else value[:limit] + "...")


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, *,
           now: float, tolerance: float = DEFAULT_TOLERANCE) -> None:
    """Check a signed call; raise SignatureError saying what is wrong, return None if it is good.

    `timestamp` and `signature` are the raw header values (None when absent); `body`
    the exact bytes received, before any JSON decoding.
    """
    if not secret:  # an empty key would accept anything signed with an empty key: fail closed
        raise SignatureError("no signing secret is configured on this side; the call cannot be checked")
    missing = [name for name, value in ((TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature))
               if value is None or not value.strip()]
    if missing:
        raise SignatureError(f"missing {' and '.join(missing)} header{'s' if len(missing) > 1 else ''}; "
                             f"sign the call as described for Treadle webhooks")
    assert timestamp is not None and signature is not None
    timestamp, signature = timestamp.strip(), signature.strip()
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError(f"{TIMESTAMP_HEADER} {_shown(timestamp)} is not a number; "
                             "send whole unix seconds, e.g. 1700000000")
    off = now - int(timestamp)
    if abs(off) > tolerance:
        direction = "in the past" if off > 0 else "in the future"
        raise SignatureError(f"{TIMESTAMP_HEADER} is {abs(off):.0f} s {direction}, more than the "
                             f"{tolerance:.0f} s allowed; check the sender's clock (or this is a replay)")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise SignatureError(f"{SIGNATURE_HEADER} is not in the form sha256=<64 hex digits>")
    expected = _digest(secret, timestamp, body)
    if not hmac.compare_digest(expected, match.group(1).lower()):
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body; sign "
                             "f'{timestamp}.' + body with HMAC-SHA256 and the shared secret")


def delivery_key(timestamp: str, signature: str) -> str:
    """What identifies one signed delivery (after `verify` accepted it): the signature
    covers the timestamp and the body, so a replay carries the same one. A hash of it,
    so the stored key is no usable signature."""
    digest = signature.strip().removeprefix(PREFIX).lower()
    return hashlib.sha256(f"{timestamp.strip()}.{digest}".encode()).hexdigest()


def check_bearer(expected: str, authorization: str | None) -> None:
    """Check an `Authorization: Bearer <token>` header against `expected` (constant time)."""
    if not expected:  # fail closed: an empty token must never match an empty header
        raise SignatureError("no bearer token is configured on this side; the call cannot be checked")
    if authorization is None or not authorization.strip():
        raise SignatureError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    # the scheme name is case-insensitive (RFC 9110 11.1); a token has no spaces (RFC 6750)
    if scheme.lower() != "bearer" or not token or " " in token:
        raise SignatureError("Authorization header is not of the form 'Bearer <token>'")
    # bytes, because compare_digest refuses str holding non-ASCII characters
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise SignatureError("wrong bearer token in the Authorization header")
