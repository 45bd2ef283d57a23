"""Every JSON request body is read through `TreadleRequest.json`: the API's `data`
parameters (Litestar calls it for each) and the webhooks' payloads alike.

The nesting depth is counted on the bytes before anything is decoded: a body of a
million `[` would otherwise exhaust the decoder's stack (RecursionError, a 500), and a
body just shallow enough to decode would do the same later, in the code that walks it
(validation, JSON columns, templates).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

from litestar import Request
from litestar.serialization import decode_json
from litestar.types import Empty

from runner.errors import MalformedBody
from runner.limits import MAX_JSON_DEPTH

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # brackets inside strings do not nest
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")


def depth_of(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (0 for a scalar)."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", body))
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0)


def check_depth(body: bytes) -> None:
    """Raise MalformedBody (400) when the body nests deeper than MAX_JSON_DEPTH."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return  # too few brackets to be too deep: no scan
    depth = depth_of(body)
    if depth > MAX_JSON_DEPTH:
        raise MalformedBody(f"the JSON body nests arrays and objects {depth:,} levels deep; the limit is "
                            f"{MAX_JSON_DEPTH}: send flatter data (a list of records rather than records "
                            "inside records)")


class TreadleRequest(Request):
    """Litestar's request, with the depth of JSON bodies checked before they are decoded."""

    async def json(self) -> Any:
        if self._json is Empty:
            if (cached := self._connection_state.json) is not Empty:
                self._json = cached
            else:
                body = await self.body()
                check_depth(body)
                self._json = self._connection_state.json = decode_json(
                    body or b"null", type_decoders=self.route_handler.resolve_type_decoders())
        return self._json
