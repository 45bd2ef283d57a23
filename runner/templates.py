"""Jinja2 templates in a sandbox, strict about undefined names.

A value that is exactly one `{{ expression }}` keeps the expression's type (a number
stays a number in a JSON body); anything else renders to a string. Compiled
templates are cached, since the same step text is rendered for every run and item.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from .errors import TemplateFailed, TemplateSyntax

_WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.S)


def _tojson(value: Any) -> str:
    return json.dumps(value, default=str)


MAX_SIZE = 1_000_000  # longest string or list `*` may build in a template
MAX_EXPONENT = 1_000


_WIDE = re.compile(r"\d{7,}")  # a format width of a million characters or more


def _check_growth(name: str, text: Any, args: tuple) -> None:
    """Refuse string methods and filters that would build a value over MAX_SIZE."""
    if not isinstance(text, str):
        return
    size = len(text)
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        size = max(size, args[0])
    elif name == "expandtabs":
        size += text.count("\t") * (args[0] if args and isinstance(args[0], int) else 8)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        size += (text.count(args[0]) if args[0] else len(text) + 1) * max(len(args[1]) - len(args[0]), 0)
    elif name == "indent" and args and isinstance(args[0], int):
        size += args[0] * (text.count("\n") + 1)
    elif name == "format" and _WIDE.search(text):
        size = MAX_SIZE + 1
    if size > MAX_SIZE:
        raise SecurityError(f"'{name}' would build a value of {size} characters (at most {MAX_SIZE})")


def _size(value: Any) -> int:
    """How big a value is once shown: characters of a text, items of a list (its items'
    own sizes counted: [long_text] * 3 is three long texts), bits of a number / 8."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, list | tuple | set | frozenset):
        return sum(len(x) if isinstance(x, str | bytes | list | tuple | dict) else 1 for x in value)
    if isinstance(value, dict):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 8
    return 0


def _check_size(what: str, size: int) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"'{what}' would build a value of {size} items (at most {MAX_SIZE})")


def _checked_result(what: str, value: Any) -> Any:
    """Any value a call, a filter or an operator gives: refused when too big, whatever
    trick built it (a safety net behind the estimates made before building)."""
    if isinstance(value, str | bytes | bytearray | list | tuple | dict) and len(value) > MAX_SIZE:
        raise SecurityError(f"'{what}' built a value of {len(value)} items (at most {MAX_SIZE})")
    if isinstance(value, int) and value.bit_length() > MAX_SIZE:
        raise SecurityError(f"'{what}' built a number of more than {MAX_SIZE} bits")
    return value


_NESTED_FIELD = re.compile(r"\{[^{}]*\{")  # `{:>{w}}`: a width given as an argument


def _format_size(fmt: str | bytes, args: tuple, kwargs: dict[str, Any], widths: bool) -> int:
    """The most `fmt % args` or `fmt.format(*args, **kwargs)` can build: the format, each
    value shown, and (`widths`: `%*d`, `{:>{w}}`) every number as a width."""
    size = len(fmt)
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            size += value.bit_length() // 3 + 2 + (abs(value) if widths else 0)
        elif isinstance(value, str | bytes | list | tuple | dict):
            size += _size(value) if not isinstance(value, list | tuple | dict) else len(repr(value)) \
                if len(value) < 1000 else _size(value) * 4
        else:
            size += 64
    return size


# methods and filters whose numbers are the size of what they build (a width, a length,
# an indent); elsewhere a big number is data (`default(5000000)`, `get('k', 10**7)`)
_SIZED_METHODS = frozenset({"to_bytes", "center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZED_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice"})


def _check_method(name: str, owner: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Refuse a method call of a text, number or list that would build a value over
    MAX_SIZE, before it runs; returns the arguments to call it with."""
    if name in ("format", "format_map") and isinstance(owner, str):
        values = dict(args[0]) if name == "format_map" and args and isinstance(args[0], dict) else kwargs
        positional = () if name == "format_map" else args
        _check_size(name, _format_size(owner, positional, values, bool(_NESTED_FIELD.search(owner))))
        return args
    if name == "join" and isinstance(owner, str | bytes) and args:
        items = args[0] if isinstance(args[0], list | tuple) else list(args[0])  # a generator, seen once
        _check_size("join", len(owner) * max(len(items) - 1, 0) + _size(items))
        return (items, *args[1:])
    if name in _SIZED_METHODS:  # a number over the limit is the size it would build
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
                raise SecurityError(f"'{name}' with {value}: a size of more than {MAX_SIZE} items")
    return args


def _guard_filter(name: str, plain: Any) -> Any:
    """Every filter: numbers over the limit refused as sizes (widths, lengths), `join`
    estimated before it builds, and what it gives checked."""
    passes = getattr(plain, "jinja_pass_arg", None)

    def filter_(*args: Any, **kwargs: Any) -> Any:
        _on_time()
        value, rest = (args[1], args[2:]) if passes else (args[0], args[1:])
        if name == "join":
            items = value if isinstance(value, list | tuple | str) else list(value)
            sep = rest[0] if rest and isinstance(rest[0], str) else kwargs.get("d", "")
            _check_size("join", len(sep) * max(len(items) - 1, 0) + _size(items))
            args = (*args[:1], items, *args[2:]) if passes else (items, *args[1:])
        elif name in _SIZED_FILTERS:
            for number in (*rest, *kwargs.values()):
                if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_SIZE:
                    raise SecurityError(f"'{name}' with {number}: a size of more than {MAX_SIZE} items")
        result = _checked_result(name, plain(*args, **kwargs))
        _on_time()  # a slow filter (wordwrap of a megabyte) is the last thing the render does
        return result
    if passes is not None:
        filter_.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return filter_


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox (immutable: a template cannot change the params or outputs it reads),
    plus limits on `*`, `**`, `%` and the string methods and filters that grow text, so
    one template cannot exhaust memory or CPU.

    The data templates read is JSON, so `x.items` is the key "items" of a mapping
    when it has one, not the `dict.items` method (plain Jinja looks at methods first).
    """

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        _on_time()
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        _check_growth(name, owner, args)
        if isinstance(owner, str | bytes | bytearray | int | float | list | tuple | dict):
            args = _check_method(name, owner, args, kwargs)
        return _checked_result(name, super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        # Jinja hands templates its own wrapper of str.format at attribute access, so
        # `call` never sees the method: the wrapper is wrapped once more
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        name, owner = value.__name__, value.__self__

        def checked(*args: Any, **kwargs: Any) -> Any:
            _check_method(name, owner, args, kwargs)
            return _checked_result(name, wrapped(*args, **kwargs))
        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        if attribute in ("format", "format_map"):
            _check_growth("format", obj, ())  # str.format is wrapped by Jinja, not seen by `call`
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _on_time()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT and not (isinstance(left, int | float) and abs(left) <= 1):
                raise SecurityError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_SIZE:
                raise SecurityError(f"the power would have more than {MAX_SIZE} bits")
        elif operator == "%":
            if isinstance(left, str) and _WIDE.search(left):
                raise SecurityError(f"a format width of more than {MAX_SIZE} characters")
            if isinstance(left, str | bytes):
                values = right if isinstance(right, tuple) else (right,)
                _check_size("%", _format_size(left, values, {}, "*" in left))
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple) and type(left) is type(right):
                # doubling a text or a list in a loop: refused before it is built
                _check_size("+", _size(left) + _size(right))
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_SIZE:
                raise SecurityError(f"the product would have more than {MAX_SIZE} bits")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
                    # a list counts the size of its items: [long_text] * 3 is three long texts
                    _check_size("*", _size(seq) * times)
        return _checked_result(operator, super().call_binop(context, operator, left, right))


class _CodeGen(CodeGenerator):
    """Compiles `a ~ b` to a join that checks the size first: doubling a text in a few
    `{% set %}` statements would otherwise reach gigabytes; and every `{% for %}` loop
    to one paced by the render's deadline (an empty loop body calls nothing the
    deadline's profile hook would see)."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        paced = nodes.Call(nodes.EnvironmentAttribute("paced"), [node.iter], [], None, None, lineno=node.lineno)
        original, node.iter = node.iter, paced
        try:
            super().visit_For(node, frame)
        finally:
            node.iter = original

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# how many `range` items one render may create in all: nested loops over ranges are
# what can make a template run for minutes (each range alone is at most 100,000)
MAX_RANGE_ITEMS = 1_000_000
_range_left: ContextVar[int | None] = ContextVar("treadle_range_left", default=None)


def _budgeted_range(*args: int) -> range:
    numbers = safe_range(*args)
    left = _range_left.get()
    if left is not None:
        left -= len(numbers)
        if left < 0:
            raise SecurityError(f"loops over range() would go through more than {MAX_RANGE_ITEMS} items in all")
        _range_left.set(left)
    return numbers


_Sandbox.code_generator_class = _CodeGen


def _sized_join(self: _Sandbox, parts: tuple) -> str:
    _on_time()
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    size = sum(map(len, texts))
    if size > MAX_SIZE:
        raise SecurityError(f"'~' would build a text of {size} characters (at most {MAX_SIZE})")
    return "".join(texts)


_Sandbox.sized_join = _sized_join  # type: ignore[attr-defined]


def _paced(self: _Sandbox, items: Any) -> Iterator[Any]:
    """The items of a template's `for` loop, stopping the render past its deadline."""
    end = _render_end.get()
    for n, item in enumerate(items, 1):
        if not n & 255 and end is not None and time.monotonic() > end:
            raise _Overdue
        yield item


_Sandbox.paced = _paced  # type: ignore[attr-defined]

_env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.globals["range"] = _budgeted_range
_env.filters["tojson"] = _tojson
_env.filters["fromjson"] = json.loads


def _guarded(name: str, plain: Any) -> Any:
    """`plain` with a size check first; keeps Jinja's pass_eval_context marker (replace has it)."""
    passes = getattr(plain, "jinja_pass_arg", None)

    def filter_(*args: Any, **kwargs: Any) -> Any:
        value, rest = (args[1], args[2:]) if passes else (args[0], args[1:])
        _check_growth(name, value, rest)
        return plain(*args, **kwargs)
    if passes is not None:
        filter_.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return filter_


for _name in ("center", "replace", "format", "indent"):
    _env.filters[_name] = _guarded(_name, _env.filters[_name])
for _name, _filter in list(_env.filters.items()):
    _env.filters[_name] = _guard_filter(_name, _filter)


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
        budget = _range_left.set(MAX_RANGE_ITEMS)
        try:
            how, compiled = _compile(value)
            with _deadline(MAX_RENDER_SECONDS):
                if how == "expr":
                    result = compiled(**context)
                    if isinstance(result, StrictUndefined):
                        str(result)  # raises UndefinedError with the name
                    return result
                return compiled.render(context)
        except _Overdue:
            raise TemplateFailed(f"not allowed in a template: rendering took longer than {MAX_RENDER_SECONDS:g}s "
                                 f"(loops over too much data?) in template {_shorten(value)!r}") from None
        except UndefinedError as exc:
            raise TemplateFailed(f"{exc.message} in template {value!r}") from None
        except SecurityError as exc:
            raise TemplateFailed(f"not allowed in a template: {exc}") from None
        except TemplateSyntaxError as exc:
            raise TemplateFailed(f"template error: {exc.message}") from None
        except Exception as exc:  # a filter or expression raised
            raise TemplateFailed(f"{type(exc).__name__}: {exc} in template {value!r}") from None
        finally:
            _range_left.reset(budget)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


MAX_RENDER_SECONDS = 1.0  # one render, whatever it does (limits.MAX_TEMPLATE_SECONDS)
_render_end: ContextVar[float | None] = ContextVar("treadle_render_end", default=None)


class _Overdue(BaseException):
    """Raised in a render past its deadline; a BaseException, so that no `except
    Exception` inside a filter or template can swallow it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Give the render inside `seconds`: every operator, call, filter and `for` loop
    of the sandbox looks at the clock (`_on_time`). Each of those is bounded by the size
    checks, so looking between them bounds the whole render."""
    token = _render_end.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _render_end.reset(token)


def _on_time() -> None:
    end = _render_end.get()
    if end is not None and time.monotonic() > end:
        raise _Overdue


def _shorten(text: str, most: int = 200) -> str:
    return text if len(text) <= most else text[:most] + "..."


def truthy(value: Any) -> bool:
    """`when` semantics: strings 'false', 'no', '0', '' and 'none' are false."""
    if isinstance(value, str):
        return value.strip().lower() not in {"", "false", "no", "0", "none", "null", "off"}
    return bool(value)


MASK = "***"  # what a secret is replaced with
ENCODED_MIN = 8  # shortest encoded form (base64, hex) worth masking: shorter ones are noise
LINE_MIN = 8  # forms at least this long are also found split across lines
PARTIAL_MIN = 4  # a piece of a secret this long, cut off by log truncation, is hidden too
SHORT_TEXT = 64  # below this length one regular expression checks faster than `in` per form


def _unbroken(text: str) -> str:
    return text.replace("\r", "").replace("\n", "") if ("\n" in text or "\r" in text) else text


def _text_forms(secret: str) -> set[str]:
    """The ways a secret is commonly printed: as is, URL-encoded, JSON-escaped, and
    base64 (both alphabets; alone, or anywhere inside a longer base64 text) or hex
    encoded. Text around a secret inside base64 changes the characters at its edges,
    so for each of the 3 byte offsets it may start at, only the characters that
    depend on the secret's bytes alone are kept."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    try:  # the environment gives bytes that are not UTF-8 as lone surrogates
        data = secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return forms
    forms |= {quote(data, safe=""), quote(data), quote_plus(data)}
    encoded = {data.hex()}
    for altchars in (None, b"-_"):
        whole = base64.b64encode(data, altchars).decode()
        encoded |= {whole, whole.rstrip("=")}
        for offset in (0, 1, 2):
            text = base64.b64encode(bytes(offset) + data, altchars).decode()
            # character i holds bits 6i..6i+5 of the data; the secret's are 8*offset on
            first, last = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
            encoded.add(text[first:last])
    return forms | {e for e in encoded if len(e) >= ENCODED_MIN}


@dataclass(frozen=True)
class _Forms:
    """Everything a Masker searches for, computed once per set of secrets."""

    lined: tuple[str, ...]  # forms (without line breaks) also found across lines
    cores: tuple[str, ...]  # the lined forms containing no other one: the quick check
    containing: dict[str, tuple[tuple[str, int], ...]]  # core -> (lined form, offset of the core in it)
    quick: re.Pattern[str]  # any core (for short texts)
    exact: tuple[str, ...]  # short forms, found only as written
    longest: int
    longest_exact: int


def _occurrences(text: str, part: str) -> list[int]:
    found, i = [], text.find(part)
    while i >= 0:
        found.append(i)
        i = text.find(part, i + 1)
    return found


@lru_cache(maxsize=256)
def _forms(values: tuple[str, ...]) -> _Forms:
    every: set[str] = set()
    for value in values:
        every |= _text_forms(value)
    lined = sorted({_unbroken(f) for f in every if len(_unbroken(f)) >= LINE_MIN}, key=len)
    exact = sorted({f for f in every if len(_unbroken(f)) < LINE_MIN}, key=len, reverse=True)
    cores: list[str] = []
    for form in lined:  # shortest first: a form containing a core is found through it
        if not any(core in form for core in cores):
            cores.append(form)
    containing = {core: tuple((f, i) for f in lined for i in _occurrences(f, core)) for core in cores}
    return _Forms(
        lined=tuple(reversed(lined)), cores=tuple(cores), containing=containing, exact=tuple(exact),
        quick=re.compile("|".join(re.escape(c) for c in cores) or "(?!)"),
        longest=max(map(len, lined), default=0), longest_exact=max(map(len, exact), default=0),
    )


def _in_text(text: str, indices: list[int]) -> dict[int, int]:
    """Where the characters at `indices` of `_unbroken(text)` are in `text`."""
    where: dict[int, int] = {}
    breaks = pos = 0  # breaks: how many line-break characters text[:pos] holds
    for i in sorted(set(indices)):
        at = i + breaks
        while extra := text.count("\n", pos, at + 1) + text.count("\r", pos, at + 1):
            breaks += extra
            pos, at = at + 1, i + breaks
        where[i] = at
        pos = at + 1
    return where


def _visible(text: str) -> int:
    return len(text) - text.count("\n") - text.count("\r")


def _open_end(text: str, forms: tuple[str, ...]) -> int:
    """Where the longest end of `text` that is a proper beginning of one of `forms`
    starts; len(text) when there is none."""
    n = best = len(text)
    for form in forms:
        j = text.find(form[0], max(n - len(form) + 1, 0), best)
        while j != -1:
            rest = n - j
            if text.startswith(form[:min(rest, 8)], j) and (rest <= 8 or text.startswith(form[:rest], j)):
                best = j
                break
            j = text.find(form[0], j + 1, best)
    return best


def _open_start(text: str, forms: tuple[str, ...]) -> int:
    """Where the longest beginning of `text` that is a proper end of one of `forms`
    ends; 0 when there is none."""
    best = 0
    for form in forms:
        hi = min(len(text), len(form) - 1)
        p = text.rfind(form[-1], best, hi)
        while p != -1:
            e = p + 1
            if text.endswith(form[-min(e, 8):], 0, e) and (e <= 8 or text.startswith(form[len(form) - e:])):
                best = e
                break
            p = text.rfind(form[-1], best, p)
    return best


def _back(text: str, end: int, count: int) -> int:
    """Where a stretch of `text` ending at `end` with at least `count` characters other
    than line breaks starts (0 when there are not that many)."""
    size = count
    while True:
        start = max(end - size, 0)
        if start == 0 or _visible(text[start:end]) >= count:
            return start
        size *= 2


def _ahead(text: str, start: int, count: int) -> int:
    """Where a stretch of `text` from `start` with at least `count` characters other
    than line breaks ends (len(text) when there are not that many)."""
    size = count
    while True:
        end = min(start + size, len(text))
        if end == len(text) or _visible(text[start:end]) >= count:
            return end
        size *= 2


class Masker:
    """Replaces secret values with *** in anything about to be recorded or shown.

    Found: each secret as is, URL-encoded, JSON-escaped, base64 (standard and URL-safe
    alphabets, alone or inside a longer base64 text) and hex encoded; forms of 8
    characters or more also when line breaks split them (`fold`, `base64 -w 76`).
    When no secret is present, masking costs one `in` test per form (fewer: a form
    containing another is only looked for where that one is found).
    """

    def __init__(self, secrets: list[str] | None = None):
        values = tuple(sorted({s for s in (secrets or []) if s}))
        self._forms = _forms(values) if values else None

    def __bool__(self) -> bool:
        return self._forms is not None

    @property
    def longest(self) -> int:
        """The longest form searched for (line breaks inside it not counted)."""
        f = self._forms
        return max(f.longest, f.longest_exact) if f else 0

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every stretch of `text` to mask, in order, not overlapping."""
        f = self._forms
        if f is None:
            return []
        found: list[tuple[int, int]] = []
        for form in f.exact:
            found += ((i, i + len(form)) for i in _occurrences(text, form))
        if f.lined:
            flat = _unbroken(text)
            if len(flat) < SHORT_TEXT:
                hits = [core for core in f.cores if core in flat] if f.quick.search(flat) else []
            else:
                hits = [core for core in f.cores if core in flat]
            lined: list[tuple[int, int]] = []
            for core in hits:  # each form holding a core is checked where the core is
                for i in _occurrences(flat, core):
                    lined += ((i - at, i - at + len(form)) for form, at in f.containing[core]
                              if i >= at and flat.startswith(form, i - at))
            if lined and flat is not text:
                where = _in_text(text, [i for span in lined for i in (span[0], span[1] - 1)])
                lined = [(where[start], where[end - 1] + 1) for start, end in lined]
            found += lined
        if not found:
            return []
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            if start < merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def text(self, text: str) -> str:
        spans = self.spans(text) if self._forms else None
        if not spans:
            return text
        parts, pos = [], 0
        for start, end in spans:
            parts += (text[pos:start], MASK)
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def data(self, value: Any) -> Any:
        if self._forms is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def open_end(self, text: str) -> int:
        """Where the longest end of `text` that could be the beginning of a secret
        (of one of its forms, line breaks allowed inside) starts; len(text) if none."""
        f = self._forms
        best = len(text)
        if f is None or not text:
            return best
        if f.lined:
            start = _back(text, len(text), f.longest - 1)
            tail = text[start:]
            flat = _unbroken(tail)
            at = _open_end(flat, f.lined)
            if at < len(flat):
                best = start + (_in_text(tail, [at])[at] if flat is not tail else at)
        if f.exact:
            best = min(best, _open_end(text, f.exact))
        return best

    def open_start(self, text: str) -> int:
        """Where the longest beginning of `text` that could be the end of a secret ends; 0 if none."""
        f = self._forms
        best = 0
        if f is None or not text:
            return best
        if f.lined:
            end = _ahead(text, 0, f.longest - 1)
            head = text[:end]
            flat = _unbroken(head)
            at = _open_start(flat, f.lined)
            if at:
                best = (_in_text(head, [at - 1])[at - 1] if flat is not head else at - 1) + 1
        if f.exact:
            best = max(best, _open_start(text, f.exact))
        return best

    def safe_cut(self, text: str) -> int:
        """Where `text`, which more text may follow, can be cut so that no secret is
        split between what is written now and what comes next: before the end that
        could begin a secret (line breaks inside it included), and before any secret
        that straddles that point."""
        f = self._forms
        if f is None:
            return len(text)
        cut = self.open_end(text)
        reach = 2 * max(f.longest, f.longest_exact)
        while cut > 0:
            start = _back(text, cut, reach)
            moved = cut
            for s, e in self.spans(text[start:]):
                if start + s < cut < start + e:
                    moved = start + s
                    break
            if moved == cut:
                return cut
            cut = moved
        return cut

    def hide_cut_end(self, text: str) -> str:
        """`text` ends where the rest was dropped (log truncation): a beginning of a
        secret at its end (at least PARTIAL_MIN characters) becomes ***."""
        at = self.open_end(text)
        return text[:at] + MASK if _visible(text[at:]) >= PARTIAL_MIN else text

    def hide_cut_start(self, text: str) -> str:
        """`text` starts where what came before was dropped: an end of a secret at
        its start (at least PARTIAL_MIN characters) becomes ***."""
        at = self.open_start(text)
        return MASK + text[at:] if _visible(text[:at]) >= PARTIAL_MIN else text
