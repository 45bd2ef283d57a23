"""Run parameters checked against a workflow's `params` (SPEC §1)."""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Protocol

from ..errors import ParamError


class ParamSpec(Protocol):
    """What checking a value needs of a param's declaration (spec.definition.ParamSpec)."""

    type: str
    enum: list[Any] | None
    default: Any
    required: bool

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(name: str, spec: ParamSpec, value: Any, from_text: bool) -> Any:
    """Return the value in the param's type or raise ValueError saying what is expected."""
    kind = spec.type
    if from_text and isinstance(value, str):
        value = _from_text(kind, value)
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "array":
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, dict)
    if not ok:
        raise ValueError(f"expected {_a(kind)}, got {json.dumps(value, default=str)}")
    if spec.enum is not None and value not in spec.enum:
        raise ValueError(f"must be one of {', '.join(map(str, spec.enum))}; got {value!r}")
    return value


def _from_text(kind: str, text: str) -> Any:
    try:
        if kind == "integer":
            number = float(text)  # "5", " 5 ", "5.0" and "1e3" are whole numbers
            return int(number) if number.is_integer() else text
        if kind == "number":
            number = float(text)
            return int(number) if number.is_integer() and "." not in text else number
        if kind == "boolean":
            low = text.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            return text
        if kind in ("array", "object"):
            return json.loads(text)
    except ValueError:
        return text
    return text


def _a(kind: str) -> str:
    return {"integer": "an integer", "array": "an array (JSON list)", "object": "an object (JSON mapping)"}.get(kind, f"a {kind}")


def validate_params(specs: dict[str, ParamSpec], given: dict[str, Any] | None, *, from_text: bool = False) -> dict[str, Any]:
    """Apply defaults and check types; raise ParamError naming every bad param.

    `from_text`: values came from a command line or a form, so "5" may be a number.
    """
    if given is not None and not isinstance(given, dict):
        raise ParamError({"params": f"expected a mapping of param names to values, got {json.dumps(given, default=str)}"})
    given = dict(given or {})
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name in given:
        if name not in specs:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (
                f"; known params: {', '.join(specs)}" if specs else "; this workflow takes no params")
            errors[name] = f"unknown param{hint}"
    for name, spec in specs.items():
        if name in given and not (from_text and given[name] == "" and not spec.required and spec.type != "string"):
            try:
                out[name] = coerce(name, spec, given[name], from_text)
            except ValueError as exc:
                errors[name] = str(exc)
        elif spec.default is not None:
            out[name] = spec.default
        elif spec.required:
            errors[name] = f"missing required param ({spec.type})"
        else:
            out[name] = None
    if errors:
        raise ParamError(errors)
    return out
