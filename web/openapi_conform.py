"""The OpenAPI document says exactly what the server accepts, for what Litestar's
generator leaves out: request bodies that are optional (a `data` parameter with a
default) are not marked required, and the bodies the server decodes into msgspec
Structs with `forbid_unknown_fields` are described by msgspec's own JSON Schema of
them (the decoder's rules: closed objects, `ge`/`max_length` inside optional fields)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import OpenAPIType, Reference, Schema
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


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _schema_of(data: Any) -> Any:
    """msgspec's JSON Schema (a dict) as Litestar's OpenAPI objects."""
    if isinstance(data, list):
        return [_schema_of(item) for item in data]
    if not isinstance(data, dict):
        return data
    if "$ref" in data:
        return Reference(ref=data["$ref"])
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type":
            fields["type"] = OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
        elif key == "properties":
            fields["properties"] = {name: _schema_of(sub) for name, sub in value.items()}
        elif key in ("anyOf", "allOf", "oneOf", "items", "additionalProperties"):
            fields[_snake(key)] = _schema_of(value)
        else:
            fields[_snake(key)] = value
    return Schema(**fields)


def conform(app: Litestar) -> None:
    """Correct `app.openapi_schema` in place (call once, before it is served)."""
    schema = app.openapi_schema
    components = schema.components.schemas if schema.components else {}
    strict = {name: struct for name, struct in _strict_structs().items() if name in components}
    _, exact = msgspec.json.schema_components(list(strict.values()), ref_template="#/components/schemas/{name}")
    for name, data in exact.items():
        components[name] = _schema_of(data)
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
