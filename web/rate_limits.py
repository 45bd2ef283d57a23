"""Rate limits (Litestar's built-in middleware) on the endpoints anyone may call:
sign-in (guessing tokens) and triggers (a flood of runs). Over the limit: 429 with
`Retry-After` (added in app.py's error handler from Litestar's RateLimit-Reset).

Counted per client address, separately for each group (the label in the key).
Behind a reverse proxy every client has the proxy's address: put the proxy's own
limits in front, or run uvicorn with --proxy-headers.
"""

from __future__ import annotations

from litestar import Request
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address

SIGNIN_PER_MINUTE = 10
TRIGGERS_PER_MINUTE = 1200


def _by(label: str):  # noqa: ANN202 - a key function for RateLimitConfig
    def key(request: Request) -> str:
        return f"{label}:{get_remote_address(request)}"
    return key


SIGNIN = RateLimitConfig(rate_limit=("minute", SIGNIN_PER_MINUTE), identifier_for_request=_by("signin"))
TRIGGERS = RateLimitConfig(rate_limit=("minute", TRIGGERS_PER_MINUTE), identifier_for_request=_by("triggers"))
