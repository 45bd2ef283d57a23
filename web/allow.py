"""`OPTIONS` answers that list every method of a path.

Litestar 2 builds its automatic OPTIONS handler when the first handler of a path
is registered and never updates it (litestar-org/litestar#4169, fixed only in v3),
so `OPTIONS /api/tokens` said `GET, OPTIONS` although POST is served there too.
Registering an explicit OPTIONS handler per shared path, ahead of the others, keeps
Litestar from making its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from litestar import Response, route
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import HTTP_204_NO_CONTENT


def _answer(allow: str) -> Any:
    def options_handler() -> Response[None]:
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": allow})

    return options_handler


def options_handlers(handlers: Iterable[Any]) -> list[HTTPRouteHandler]:
    """An OPTIONS handler for each path that two or more of `handlers` serve."""
    methods: dict[str, set[str]] = defaultdict(set)
    owners: dict[str, int] = defaultdict(int)
    for handler in handlers:
        if not isinstance(handler, HTTPRouteHandler):
            continue
        for path in handler.paths:
            methods[path] |= set(handler.http_methods)
            owners[path] += 1
    made = []
    for path, served in methods.items():
        if owners[path] > 1 and "OPTIONS" not in served:
            allow = ", ".join(sorted(served | {"OPTIONS"}))
            made.append(route(path, http_method=["OPTIONS"], include_in_schema=False,
                              sync_to_thread=False, name=f"options:{path}")(_answer(allow)))
    return made
