"""The start form of a workflow, generated from its `params`.

Values travel as text; `runner.dsl.params.validate_params(from_text=True)` turns them
into the declared types and names every bad one, which the form shows beside its field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner.dsl.definition import ParamSpec


@dataclass
class FormField:
    name: str
    type: str
    widget: str  # text | number | integer | boolean | select | json
    required: bool
    value: str
    description: str | None
    options: list[str]
    error: str | None = None

    @property
    def input_id(self) -> str:
        return "param-" + self.name


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _widget(spec: ParamSpec) -> str:
    if spec.enum is not None:
        return "select"
    return {"number": "number", "integer": "integer", "boolean": "boolean",
            "array": "json", "object": "json"}.get(spec.type, "text")


def form_fields(params: dict[str, ParamSpec], values: dict[str, str] | None = None,
                errors: dict[str, str] | None = None) -> list[FormField]:
    """One field per param, prefilled with `values` (as posted) or else the defaults."""
    fields = []
    for name, spec in params.items():
        widget = _widget(spec)
        options: list[str] = []
        if widget == "select":
            options = [as_text(v) for v in spec.enum or []]
        elif widget == "boolean":
            options = ["true", "false"]
        if options and spec.default is None:
            options = ["", *options]  # nothing chosen yet (a required select then makes you choose)
        value = values[name] if values is not None and name in values else as_text(spec.default)
        fields.append(FormField(name=name, type=spec.type, widget=widget, required=spec.required,
                                value=value, description=spec.description, options=options,
                                error=(errors or {}).get(name)))
    return fields


def posted_params(params: dict[str, ParamSpec], form: Any) -> dict[str, str]:
    """The posted values of the declared params only (other form keys are ignored)."""
    return {name: form.get(name) for name in params if form.get(name) is not None}

