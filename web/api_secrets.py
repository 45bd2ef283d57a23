"""Which secrets this server has, by name (`treadle validate --server URL` asks before a
workflow that needs them goes live). Only names that are asked for are answered, and
never a value."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.params import JSONBody

from runner.dsl.definition import ENV_NAME_PATTERN

from .api import _errors, _services


class SecretsCheck(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/secrets/check."""

    names: Annotated[list[Annotated[str, msgspec.Meta(pattern=ENV_NAME_PATTERN, max_length=200)]],
                     msgspec.Meta(max_length=500)]


@post("/api/secrets/check", status_code=200, opt={"scope": "run"}, tags=["workflows"], responses=_errors(400))
async def check_secrets(request: Request, data: JSONBody[SecretsCheck]) -> dict[str, Any]:
    """`{"names": [...]}` -> `{"present": [...], "missing": [...]}`: whether each named
    secret is set where this server reads secrets (its environment and --secrets-file)."""
    environ = _services(request).engine.environ
    names = sorted(set(data.names))
    return {"present": [n for n in names if environ.get(n)], "missing": [n for n in names if not environ.get(n)]}


SECRET_ROUTES = [check_secrets]
