"""Unknown query parameters are refused on the API instead of being ignored: a typo
(`?stauts=failed`) or a filter that does not exist (`?status=paused` on workflows)
would otherwise answer everything and look like a result."""

from __future__ import annotations

from functools import cache

from litestar import Request
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg, PathParameter

# what Litestar fills in itself: never a query parameter
_RESERVED = {"request", "scope", "state", "headers", "cookies", "query", "body", "data", "socket", "receive", "send"}


@cache
def query_names(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query parameters `handler` takes (under their names in the URL)."""
    names = set()
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg):
            if kwarg.header or kwarg.cookie or isinstance(kwarg, PathParameter):
                continue
            names.add(kwarg.query or kwarg.name or name)
        elif kwarg is None and name not in _RESERVED:
            names.add(name)
    return frozenset(names)


def refuse_unknown_query(request: Request) -> None:
    """`before_request` hook of the app: a 400 naming the unknown parameters and the known ones."""
    if not request.url.path.startswith("/api/") or not request.query_params:
        return None
    handler = request.route_handler
    if not isinstance(handler, HTTPRouteHandler):
        return None
    known = query_names(handler) - set(request.path_params)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        listed = ", ".join(f"'{u}'" for u in unknown)
        takes = ", ".join(sorted(known)) or "none"
        raise ValidationException(f"unknown query parameter {listed} for {request.method} "
                                  f"{request.url.path}; this endpoint takes: {takes}")
    return None
