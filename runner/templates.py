"""Jinja2 templates in a sandbox, strict about undefined names.

A value that is exactly one `{{ expression }}` keeps the expression's type (a number
stays a number in a JSON body); anything else renders to a string. Compiled
templates are cached, since the same step text is rendered for every run and item.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

_WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.S)


def _tojson(value: Any) -> str:
    return json.dumps(value, default=str)


MAX_SIZE = 1_000_000  # longest string or list `*` may build in a template
MAX_EXPONENT = 1_000


class _Sandbox(SandboxedEnvironment):
    """The sandbox, plus limits on `*` and `**` so one template cannot exhaust memory or CPU.

    The data templates read is JSON, so `x.items` is the key "items" of a mapping
    when it has one, not the `dict.items` method (plain Jinja looks at methods first).
    """

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT and not (isinstance(left, int | float) and abs(left) <= 1):
                raise SecurityError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        else:
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_SIZE:
                    raise SecurityError(f"'*' would build a value of {len(seq) * times} items (at most {MAX_SIZE})")
        return super().call_binop(context, operator, left, right)


_env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.filters["tojson"] = _tojson
_env.filters["fromjson"] = json.loads


class TemplateSyntax(Exception):
    def __init__(self, message: str, lineno: int):
        super().__init__(message)
        self.message, self.lineno = message, lineno


class TemplateFailed(Exception):
    """Rendering failed at run time (undefined name, sandbox violation, error in a filter)."""


def _whole_expression(text: str) -> str | None:
    m = _WHOLE.match(text)
    if m and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
        return m.group("expr")
    return None


# `{{ a.b['c'][0] }}`: a plain path, by far the commonest template. It is checked
# and evaluated here without Jinja (whose parse and compile cost milliseconds per
# distinct template); anything the fast path is not sure about goes to Jinja.
_PATH = re.compile(
    r"^\s*\{\{\s*([A-Za-z][A-Za-z0-9_]*)"
    r"((?:\s*\.\s*[A-Za-z][A-Za-z0-9_]*|\s*\[\s*(?:'[^'\\]*'|\"[^\"\\]*\"|-?[0-9]+)\s*\])*)\s*\}\}\s*$"
)
_SEGMENT = re.compile(r"\.\s*([A-Za-z][A-Za-z0-9_]*)|\[\s*(?:'([^'\\]*)'|\"([^\"\\]*)\"|(-?[0-9]+))\s*\]")
_MISS = object()


@lru_cache(maxsize=65536)
def plain_path(text: str) -> tuple[str, tuple[str | int, ...]] | None:
    """(name, segments) when `text` is exactly one plain-path expression, else None."""
    m = _PATH.match(text)
    if m is None or "\n" in text:
        return None
    segments: list[str | int] = []
    for attr, sq, dq, index in _SEGMENT.findall(m.group(2)):
        key = attr or sq or dq
        if key:
            if key.startswith("_"):
                return None  # let the sandbox judge anything private-looking
            segments.append(key)
        else:
            segments.append(int(index))
    return m.group(1), tuple(segments)


def _follow(context: dict[str, Any], path: tuple[str, tuple[str | int, ...]]) -> Any:
    """The value at `path`, or _MISS when Jinja must decide (missing keys, other types)."""
    name, segments = path
    value = context.get(name, _MISS)
    for seg in segments:
        if value is _MISS:
            return _MISS
        if isinstance(value, dict) and isinstance(seg, str):
            value = value.get(seg, _MISS)
        elif isinstance(value, list) and isinstance(seg, int) and -len(value) <= seg < len(value):
            value = value[seg]
        else:
            return _MISS
    return value


@lru_cache(maxsize=65536)
def _compile(text: str) -> Any:
    expr = _whole_expression(text)
    if expr is not None:
        return ("expr", _env.compile_expression(expr, undefined_to_none=False))
    return ("text", _env.from_string(text))


def check_template(text: str) -> None:
    """Raise TemplateSyntax if `text` does not parse."""
    if plain_path(text) is not None:
        return
    try:
        tree = _env.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateSyntax(exc.message or str(exc), exc.lineno or 1) from None
    # parsing does not look filter and test names up (compiling does, at several
    # times the cost): check them here so a typo fails at load, not mid-run
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = _env.filters if isinstance(node, nodes.Filter) else _env.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            close = difflib.get_close_matches(node.name, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TemplateSyntax(f"no {kind} named '{node.name}'{hint}", node.lineno or 1)


def step_refs(text: str) -> list[tuple[str, int]]:
    """(step id, line) for each `steps.x` or `steps['x']` a template reads, in order.

    Only what is inside `{{ }}` and `{% %}` counts: text around it is not code.
    """
    path = plain_path(text)
    if path is not None:
        name, segments = path
        return [(segments[0], 1)] if name == "steps" and segments and isinstance(segments[0], str) else []
    try:
        tree = _env.parse(text)
    except TemplateSyntaxError:
        return []
    refs: list[tuple[str, int]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not (isinstance(node.node, nodes.Name) and node.node.name == "steps"):
            continue
        if isinstance(node, nodes.Getattr):
            refs.append((node.attr, node.lineno))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            refs.append((node.arg.value, node.lineno))
    return sorted(refs, key=lambda r: r[1])


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render strings (recursively through lists and dicts); other values pass through."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        path = plain_path(value)
        if path is not None:
            found = _follow(context, path)
            if found is not _MISS:
                return found
        try:
            how, compiled = _compile(value)
            if how == "expr":
                result = compiled(**context)
                if isinstance(result, StrictUndefined):
                    str(result)  # raises UndefinedError with the name
                return result
            return compiled.render(context)
        except UndefinedError as exc:
            raise TemplateFailed(f"{exc.message} in template {value!r}") from None
        except SecurityError as exc:
            raise TemplateFailed(f"not allowed in a template: {exc}") from None
        except TemplateSyntaxError as exc:
            raise TemplateFailed(f"template error: {exc.message}") from None
        except Exception as exc:  # a filter or expression raised
            raise TemplateFailed(f"{type(exc).__name__}: {exc} in template {value!r}") from None
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def truthy(value: Any) -> bool:
    """`when` semantics: strings 'false', 'no', '0', '' and 'none' are false."""
    if isinstance(value, str):
        return value.strip().lower() not in {"", "false", "no", "0", "none", "null", "off"}
    return bool(value)


class Masker:
    """Replaces secret values with *** in anything about to be recorded or shown."""

    def __init__(self, secrets: list[str] | None = None):
        values = {s for s in (secrets or []) if s}
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if values else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    @property
    def longest(self) -> int:
        return len(self._values[0]) if self._values else 0

    def safe_cut(self, text: str) -> int:
        """Where `text`, which more text may follow, can be cut so that no secret is
        split between what is written now and what comes next: before the last
        `longest - 1` characters, and before any secret that straddles that point."""
        if self._pattern is None:
            return len(text)
        cut = max(len(text) - (self.longest - 1), 0)
        for match in self._pattern.finditer(text):
            if match.start() < cut < match.end():
                return match.start()
        return cut

    def text(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern else text

    def data(self, value: Any) -> Any:
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value
