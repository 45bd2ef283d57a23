"""The OpenAPI document says exactly what the server accepts, for what Litestar's
generator leaves out: request bodies that are optional (a `data` parameter with a
default) are not marked required, and bodies the server decodes into msgspec Structs
with `forbid_unknown_fields` say `additionalProperties: false`."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.types import Empty


def _strict_structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    todo = list(msgspec.Struct.__subclasses__())
    while todo:
        struct = todo.pop()
        todo += struct.__subclasses__()
        if struct.__struct_config__.forbid_unknown_fields:
            found[struct.__name__] = struct
    return found


def conform(app: Litestar) -> None:
    """Correct `app.openapi_schema` in place (call once, before it is served)."""
    schema = app.openapi_schema
    components = schema.components.schemas if schema.components else {}
    for name in _strict_structs():
        if name in components:
            components[name].additional_properties = False
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            data = handler.parsed_fn_signature.parameters.get("data")
            item = schema.paths.get(route.path_format) if schema.paths else None
            if data is None or item is None or data.default is Empty:
                continue
            for method in handler.http_methods:
                operation: Any = getattr(item, method.lower(), None)
                if operation is not None and operation.request_body is not None:
                    operation.request_body.required = False
