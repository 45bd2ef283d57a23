"""JSON API for the circuit breakers of `http` steps: list them, reset one."""

from __future__ import annotations

from typing import TypedDict

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from runner.engine.circuit import Breaker
from runner.engine.report import iso

from .api import Limit, Page, _errors, _services
from .auth import identity_of


class BreakerSettingsDoc(TypedDict):
    failures: int
    reset_after: float  # seconds
    half_open_max: int


class BreakerDoc(TypedDict):
    host: str  # scheme://host:port, or the key of a keyed breaker
    key: str | None  # `circuit_breaker.key`: every step naming it shares this breaker, whatever its host
    state: str  # closed | open | half_open
    consecutive_failures: int
    failures: int  # totals since the server started
    successes: int
    rejected: int  # calls refused while open (or half-open with every trial slot taken)
    trials_in_flight: int
    opened_at: str | None
    next_trial_at: str | None  # when the circuit lets a trial through; null unless open
    last_error: str | None
    settings: BreakerSettingsDoc


def breaker_doc(breaker: Breaker) -> BreakerDoc:
    snap = breaker.snapshot()
    return {**snap, "opened_at": iso(snap["opened_at"]), "next_trial_at": iso(snap["next_trial_at"])}  # type: ignore[typeddict-item]


def shown_breakers(request: Request) -> list[Breaker]:
    """The breakers the requester may see: all for a token without a namespace, else
    those its namespace's workflows called (a breaker is shared by every caller of a host)."""
    return _services(request).engine.breakers.all(identity_of(request).namespace)


def reset_breakers(request: Request, name: str) -> list[Breaker]:
    """Close the breakers `name` designates (`scheme://host:port` or `host:port`) among
    those the requester may see; [] if none."""
    found = _services(request).engine.breakers.find(name, identity_of(request).namespace)
    for breaker in found:
        breaker.reset()
    return found


class BreakerPage(TypedDict):
    items: list[BreakerDoc]
    total: int
    page: int
    limit: int


@get("/api/circuit-breakers", tags=["circuit-breakers"], responses=_errors(400))
async def list_breakers(request: Request, page: Page = 1, limit: Limit = 50) -> BreakerPage:
    """Every host an http step with a `circuit_breaker` has called, with its state and counts
    (a token with a namespace: the hosts its namespace's workflows called). Errors are masked."""
    breakers = shown_breakers(request)
    shown = breakers[(page - 1) * limit: page * limit]
    return {"items": [breaker_doc(b) for b in shown], "total": len(breakers), "page": page, "limit": limit}


@get("/api/circuit-breakers/{target:path}", tags=["circuit-breakers"], responses=_errors(404))
async def get_breaker(request: Request, target: FromPath[str]) -> BreakerDoc:
    """One breaker: by its key (`billing-api`), or by its host (`scheme://host:port`
    URL-encoded, or a plain `host:port`)."""
    name = _rejoin_scheme(target.strip("/"))
    found = _services(request).engine.breakers.find(name, identity_of(request).namespace)
    if not found:
        raise NotFoundException(f"no circuit breaker '{name}' (a key or host gets one on its first call)")
    return breaker_doc(found[0])


# the host is URL-encoded (`http%3A%2F%2F127.0.0.1%3A9000`) and servers decode the path
# before routing, so its slashes come back as segments: take everything up to `/reset`
@post("/api/circuit-breakers/{target:path}", status_code=200, opt={"audit": "breaker.reset", "scope": "admin"},
      tags=["circuit-breakers"], responses=_errors(403, 404))
async def reset_breaker(request: Request, target: FromPath[str]) -> BreakerDoc:
    """`POST /api/circuit-breakers/{host}/reset`: close the circuit of `host` now.

    `host` is `scheme://host:port` URL-encoded, or a plain `host:port`. Needs `admin`: a
    breaker is shared by every workflow calling the host (a token with a namespace
    resets only those its namespace's workflows called).
    """
    name, _, action = target.strip("/").rpartition("/")
    if action != "reset" or not name:
        raise NotFoundException("no such route; use POST /api/circuit-breakers/{host}/reset")
    name = _rejoin_scheme(name)
    found = reset_breakers(request, name)
    if not found:
        raise NotFoundException(f"no circuit breaker for '{name}' (hosts get one on their first call)")
    return breaker_doc(found[0])


def _rejoin_scheme(name: str) -> str:
    """`http:/host:port` (the path's `//` merged into one) back to `http://host:port`."""
    scheme, sep, rest = name.partition(":/")
    if sep and scheme.lower() in ("http", "https"):
        return f"{scheme}://{rest.lstrip('/')}"
    return name


BREAKER_ROUTES = [list_breakers, get_breaker, reset_breaker]
