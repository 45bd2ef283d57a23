"""One definition file -> a Definition, or every problem in it with its position.

The loader never stops at the first problem: YAML syntax, unknown and missing keys,
types, durations, duplicate step ids, `needs` naming a missing step, cycles, template
syntax and references to steps that do not run earlier are all collected, each as a
Problem (`path:line:column: message`) naming the field.
"""

from __future__ import annotations

import difflib
import errno
import gc
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml.reader
from pydantic import BaseModel, ValidationError

from ..errors import Problem
from ..limits import (
    DEFAULT_RUN_TIMEOUT,
    MAX_FILE_BYTES,
    MAX_FOREACH_ITEMS,
    MAX_PROBLEMS,
    MAX_RUN_TIMEOUT,
    duration_text,
    size_text,
)
from ..templates import TemplateSyntax, check_template, step_refs
from . import definition as d
from . import trigger_spec as t
from .dag import Dag, build_dag
from .durations import parse_duration
from .refs import name_refs
from .yaml_source import Source, YamlSyntaxError, parse

log = logging.getLogger("treadle.loader")


@dataclass
class Definition:
    """A loaded workflow file: its spec and graph when valid, its problems when not."""

    name: str
    path: str  # as shown to users (relative to the definitions folder when loaded from one)
    source: str
    version: str  # content hash
    spec: d.WorkflowSpec | None = None
    dag: Dag | None = None
    problems: list[Problem] = field(default_factory=list)
    # the spec as read even when other problems keep the file from running, so that
    # checks across files (crossfile.py) still report everything in one pass
    parsed: d.WorkflowSpec | None = None
    base_dir: Path = field(default_factory=Path.cwd)  # cwd for `run` steps
    name_at: tuple[int, int] = (1, 1)  # where the name is written (line, column), for name clashes
    loaded_at: float = field(default_factory=time.time)
    # set by the catalog:
    broken: Definition | None = None  # a newer text of this file that failed to load; self stays in force
    commit: str | None = None  # git: the last commit touching the file
    dirty: bool = False  # git: the file has uncommitted changes

    @property
    def valid(self) -> bool:
        """This version can run."""
        return self.spec is not None and not self.problems

    @property
    def healthy(self) -> bool:
        """Valid, and the file on disk is this version (no newer broken edit)."""
        return self.valid and self.broken is None

    @property
    def current_problems(self) -> list[Problem]:
        """Problems of the file as it is on disk now."""
        return self.broken.problems if self.broken is not None else self.problems

    @property
    def revision(self) -> str | None:
        """What a run records as its commit: `abc123`, `abc123+dirty`, or None outside git."""
        if self.commit is None:
            return "uncommitted" if self.dirty else None
        return self.commit + ("+dirty" if self.dirty else "")


def version_of(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def load_file(path: Path, shown_as: str | None = None, root: Path | None = None) -> Definition:
    """Load one file; problems are collected, never raised.

    `root`: the definitions folder; a file that resolves outside it (a symlink to
    /etc/passwd or to the server's secrets file, say) is refused unread."""
    shown = shown_as or str(path)
    name = path.stem
    if root is not None and (outside := _outside(path, root)):
        return _failed(name, shown, "", outside)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _failed(name, shown, "", _too_big(size))
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return _failed(name, shown, "", f"file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        return _failed(name, shown, "", f"cannot read file: {exc.strerror}")
    return load_text(text, shown, name=name, base_dir=path.parent)


def _outside(path: Path, root: Path) -> str | None:
    """Why `path` may not be read as a definition of `root` (None: it may)."""
    try:
        target = path.resolve(strict=True)
        inside = root.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # a link loop, a dangling link, a file gone meanwhile
        loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        why = "it is a symbolic link that points to itself (a loop)" if loop else (exc.strerror or str(exc))
        return f"cannot read file: {why}; remove it or make it a plain file"
    if not target.is_relative_to(inside):
        return ("the file is a symbolic link to a file outside the definitions folder; it is not read "
                "(copy the file into the folder, or link to a file inside it)")
    return None


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Loading allocates hundreds of thousands of small objects and no reference
    cycles; the cyclic collector would scan them over and over (half the load time of
    a 10,000-step file), so it waits until the load is done."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _too_big(size: int) -> str:
    return (f"file is {size:,} bytes; the limit is {size_text(MAX_FILE_BYTES)} (split the workflow into "
            "smaller ones: a `workflow` step runs another workflow as a child)")


def load_text(text: str, path: str, *, name: str | None = None, base_dir: Path | None = None) -> Definition:
    """Load a definition from text; `path` is used in messages and `name` is the default name.

    Never raises for any text: every problem, even one in Treadle itself, is a Problem.
    """
    name = name or Path(path).stem
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (`"\ud800"` in a JSON string)
        line, col = _position(text, exc.start)
        shown = text.encode("utf-8", "replace").decode("utf-8")
        return _failed(name, path, shown, f"the text is not valid Unicode ({exc.reason} at character {exc.start + 1})",
                       at=(line, col))
    if len(data) > MAX_FILE_BYTES:
        return _failed(name, path, text, _too_big(len(data)))
    try:
        with _without_cyclic_gc():
            return _load_text(text, path, name=name, base_dir=base_dir, version=hashlib.sha256(data).hexdigest()[:12])
    except Exception as exc:  # a bug in Treadle: report it on the file rather than crash the caller
        log.exception("loading %s", path)
        return _failed(name, path, text, f"internal error while checking this file: {type(exc).__name__}: {exc} "
                                         "(a bug in Treadle; please report it with the file)")


_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # YAML's line breaks
_NOT_YAML = re.compile(yaml.reader.Reader.NON_PRINTABLE.pattern)  # what YAML refuses to read


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character `index` of `text`, as YAML counts them."""
    breaks = list(_LINE_BREAK.finditer(text, 0, index))
    start = breaks[-1].end() if breaks else 0
    return len(breaks) + 1, index - start + 1


def _unreadable(text: str) -> Problem | None:
    """A character YAML does not allow (control characters, U+FFFE, U+FFFF), with its
    position; the YAML reader itself says only `position 40` (characters from the start)."""
    found = _NOT_YAML.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "a control character" if ord(char) < 0xA0 else "not a character"
    return Problem("", *_position(text, found.start()),
                   f"invalid YAML: the character U+{ord(char):04X} ({kind}) is not allowed; remove it")


def _load_text(text: str, path: str, *, name: str, base_dir: Path | None, version: str) -> Definition:
    result = Definition(name=name, path=path, source=text, version=version, base_dir=base_dir or Path.cwd())
    problems = _Collector(path, text)
    unreadable = _unreadable(text)
    if unreadable is not None:
        problems.add(unreadable.line, unreadable.column, unreadable.message)
        result.problems = problems.items
        return result
    try:
        src = parse(text)
    except YamlSyntaxError as exc:
        problems.add(exc.line, exc.column, exc.args[0] + _yaml_hint(text, exc.line, exc.args[0]))
        result.problems = problems.items
        return result
    for dup_path, line, col, first in src.duplicates:
        problems.add(line, col, f"{_dotted(dup_path)}: key '{dup_path[-1]}' written twice (first on line {first}); remove one, YAML would keep only the last")
    if not isinstance(src.data, dict):
        what = {type(None): "empty", list: "a list", str: "a single text"}.get(type(src.data), f"a single {type(src.data).__name__}")
        problems.add(*src.where(()), f"the file is {what}; a workflow is a mapping with at least 'steps', e.g. steps: [{{id: hello, log: hi}}]")
        result.problems = problems.items
        return result
    if isinstance(src.data.get("name"), str):
        result.name = src.data["name"]
        result.name_at = src.where(("name",))
    spec: d.WorkflowSpec | None = None
    try:
        spec = d.WorkflowSpec.model_validate(src.data)
    except ValidationError as exc:
        _report_validation(exc.errors(), src, problems)
    # the graph and templates are checked even when some keys are wrong, so that
    # one pass over a file shows every problem in it
    links = _raw_links(src.data)
    dag = build_dag(links, src, problems)
    _check_templates(src, dag, {sid for sid, _ in links}, problems)
    _check_handlers(src, {sid for sid, _ in links}, problems)
    _check_success(src, [sid for sid, _ in links], problems)
    _check_text_values(src, problems)
    _check_run_limits(src, problems)
    result.problems = problems.items
    result.parsed = spec
    if not result.problems and spec is not None:
        result.spec, result.dag = spec, dag
    return result


def _yaml_hint(text: str, line: int, message: str) -> str:
    """A plain-words fix for the common causes of a YAML syntax error, or ""."""
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if any("\t" in row[: len(row) - len(row.lstrip())] for row in lines[max(0, line - 2): line]):
        return "; indent with spaces: YAML does not allow tabs for indentation"
    if "mapping values are not allowed" in message:
        return ("; a value that contains ': ' must be quoted, e.g. log: \"time: 5\" (or use a `|` block for "
                "several lines)")
    if "quoted scalar" in message and "end of stream" in message:
        return "; a quote is not closed: end the value with the quote it starts with (\" or ')"
    if "{{" in here and ("flow" in message or "unhashable" in message or "expected ','" in message):
        return "; a template at the start of a value must be quoted: key: \"{{ ... }}\""
    return ""


def _failed(name: str, path: str, source: str, message: str, at: tuple[int, int] = (1, 1)) -> Definition:
    return Definition(name=name, path=path, source=source, version=version_of(source),
                      problems=[Problem(path, *at, message)])


class _Collector:
    """The problems found, each once, in file order; at most MAX_PROBLEMS of them."""

    def __init__(self, path: str, text: str = ""):
        self.path, self._text = path, text
        self.text = text
        self._seen: dict[Problem, None] = {}  # in the order found (a set would lose it)
        self._lines: int | None = None

    @property
    def lines(self) -> int:
        """Lines of the text, as YAML counts them."""
        if self._lines is None:
            self._lines = sum(1 for _ in _LINE_BREAK.finditer(self._text)) + 1
        return self._lines

    def add(self, line: int, column: int, message: str) -> None:
        if not message.isprintable():  # a key or value with a line break: one problem, one line
            message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self._seen.setdefault(Problem(self.path, line, column, message))

    @property
    def items(self) -> list[Problem]:
        found = sorted(self._seen, key=lambda p: (p.line, p.column))  # stable: same place, order found
        if len(found) > MAX_PROBLEMS:
            rest = found[MAX_PROBLEMS]
            found = [*found[:MAX_PROBLEMS], Problem(
                self.path, rest.line, rest.column,
                f"{len(found) - MAX_PROBLEMS:,} more problems not shown; fix the ones above first")]
        return found


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# lists of mappings: what each item is
_LIST_ITEMS: dict[str, type[BaseModel]] = {
    "steps": d.StepSpec, "notify": t.NotifySpec, "schedule": t.ScheduleSpec, "event": t.EventSpec,
    "file": t.FileTriggerSpec, "after": t.AfterSpec, "preconditions": d.PreconditionSpec,
}


def _model_at(data_path: tuple) -> type[BaseModel] | None:
    """Which model describes the mapping at `data_path` (for key suggestions)."""
    shape: list[Any] = [d.WorkflowSpec]
    model: Any = d.WorkflowSpec
    for part in data_path:
        if model is None:
            return None
        if isinstance(part, int):
            model = _LIST_ITEMS.get(shape[-1]) if isinstance(shape[-1], str) else None
        else:
            model = {
                (d.WorkflowSpec, "defaults"): d.DefaultsSpec,
                (d.WorkflowSpec, "success"): d.SuccessSpec,
                (d.WorkflowSpec, "preconditions"): "preconditions",
                (d.WorkflowSpec, "steps"): "steps",
                (d.WorkflowSpec, "on_failure"): "steps",
                (d.WorkflowSpec, "on_success"): "steps",
                (d.WorkflowSpec, "finally"): "steps",
                (d.StepSpec, "compensate"): d.CompensationSpec,
                (d.CompensationSpec, "http"): d.HttpSpec,
                (d.CompensationSpec, "retry"): d.RetrySpec,
                (d.StepSpec, "approval"): d.ApprovalSpec,
                (d.WorkflowSpec, "params"): "params",
                (d.StepSpec, "http"): d.HttpSpec,
                (d.StepSpec, "retry"): d.RetrySpec,
                (d.DefaultsSpec, "retry"): d.RetrySpec,
                (d.StepSpec, "circuit_breaker"): d.CircuitBreakerSpec,
                (d.StepSpec, "foreach"): d.ForeachSpec,
                (d.StepSpec, "repeat"): d.RepeatSpec,
                (d.DefaultsSpec, "circuit_breaker"): d.CircuitBreakerSpec,
                ("params", None): d.ParamSpec,
                (d.WorkflowSpec, "triggers"): t.TriggersSpec,
                (d.WorkflowSpec, "concurrency"): t.ConcurrencySpec,
                (d.WorkflowSpec, "notify"): "notify",
                (t.TriggersSpec, "webhook"): t.WebhookSpec,
                (t.TriggersSpec, "schedule"): "schedule",
                (t.TriggersSpec, "event"): "event",
                (t.TriggersSpec, "file"): "file",
                (t.TriggersSpec, "after"): "after",
            }.get((model, None if model == "params" else part))
        shape.append(model)
    if isinstance(model, str):  # a list written as its one item (`file: {path: ...}`)
        model = _LIST_ITEMS.get(model)
    return model if isinstance(model, type) else None


def _walk_loc(loc: tuple, data: Any) -> tuple[tuple, int | None]:
    """Split a pydantic `loc` into the part that walks the data and where a union branch starts.

    Returns (data path, length of the data path at the first union tag or None).
    """
    out: list[Any] = []
    node = data
    union_at: int | None = None
    for part in loc:
        if isinstance(node, dict) and part in node or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            out.append(part)
        elif isinstance(part, str) and union_at is None:
            union_at = len(out)
    return tuple(out), union_at


def _report_validation(errors: list[Any], src: Source, problems: _Collector,
                       model_at: Callable[[tuple], type[BaseModel] | None] = _model_at) -> None:
    """Report pydantic errors; the errors of a union's branches become one message.

    `model_at`: which model describes the mapping at a path (for the keys an unknown
    key is compared with); another file format (a test file) passes its own."""
    unions: dict[tuple, list[tuple[tuple, Any]]] = {}
    for err in errors:
        path, union_at = _walk_loc(err["loc"], src.data)
        if union_at is not None and err["type"] not in ("missing", "extra_forbidden", "misplaced"):
            unions.setdefault(path[:union_at], []).append((path, err))
        else:
            _report_one(err, path, src, problems, model_at)
    for at, branch_errors in unions.items():
        deeper = [(p, e) for p, e in branch_errors if len(p) > len(at)]
        bounded = [(p, e) for p, e in branch_errors if e["type"] in _BOUNDS]
        if deeper:  # the value had the right shape for one branch and failed inside it
            for path, err in deeper:
                _report_one(err, path, src, problems, model_at)
        elif bounded:  # the right type, out of range (`retry: 1001`): say the bound, not the type
            _report_one(bounded[0][1], bounded[0][0], src, problems, model_at)
        else:
            expected = list(dict.fromkeys(_EXPECTED.get(e["type"], e["type"]) for _, e in branch_errors))
            _report_type(at, expected, branch_errors[0][1].get("input"), src, problems)


_BOUNDS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")
_EXPECTED = {
    "string_type": "text", "list_type": "a list", "bool_type": "true/false",
    "bool_parsing": "true/false", "dict_type": "a mapping", "model_type": "a mapping",
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number",
}
_MODEL_HINTS = {
    "StepSpec": "each step is a mapping with an id and one kind, e.g. {id: build, run: make}",
    "RetrySpec": "write a number of retries (retry: 3) or a mapping (retry: {limit: 3, delay: 5s})",
    "ParamSpec": "write a type (n: integer) or a mapping (n: {type: integer, default: 5})",
    "DefaultsSpec": "write a mapping, e.g. defaults: {timeout: 30s, retry: 2}",
    "HttpSpec": "write a mapping, e.g. http: {method: GET, url: https://example.com}",
    "CircuitBreakerSpec": "write a mapping, e.g. circuit_breaker: {failures: 5, reset_after: 30s}",
}
_PATTERN_HINTS = {
    d.STEP_ID_PATTERN: "step ids use only letters, digits, '_' and '-'",
    d.NAME_PATTERN: "names use letters, digits, '_', '.' and '-', and start with a letter, digit or '_'",
    d.ENV_NAME_PATTERN: "names use letters, digits and '_', and do not start with a digit",
}
_MISSING_HINTS = {
    "id": " (every step needs one, e.g. id: build)",
    "steps": " (a workflow is a list of steps, e.g. steps: [{id: hello, log: hi}])",
    "url": " (the address to call, e.g. url: https://example.com)",
}
# names other tools use for the values of our choices
_CHOICE_SYNONYMS = {"int": "integer", "float": "number", "str": "string", "text": "string",
                    "bool": "boolean", "list": "array", "dict": "object", "map": "object"}


def _report_one(err: Any, data_path: tuple, src: Source, problems: _Collector,
                model_at: Callable[[tuple], type[BaseModel] | None] = _model_at) -> None:
    kind = err["type"]
    where = _dotted(data_path)
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        parent = data_path[:-1] if data_path and data_path[-1] == key else data_path
        line, col = src.where((*parent, key), key=True)
        problems.add(line, col, _unknown_key_message(key, parent, src.data, model_at))
    elif kind == "missing":
        field_name = err["loc"][-1]
        line, col = src.where(data_path)
        problems.add(line, col, f"{where}: missing required key '{field_name}'{_MISSING_HINTS.get(field_name, '')}")
    elif kind == "misplaced":  # a model-level error about one of its keys
        at = (*data_path, ctx["at"])
        problems.add(*src.where(at, key=True), f"{_dotted(at)}: {err['msg']}")
    elif kind in _EXPECTED:
        _report_type(data_path, [_EXPECTED[kind]], value, src, problems, ctx.get("class_name"))
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        if not close and _CHOICE_SYNONYMS.get(str(value).lower()) in choices:
            close = [_CHOICE_SYNONYMS[str(value).lower()]]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.add(*src.where(data_path), f"{where}: {_shown(value, data_path, src)} is not one of {', '.join(choices)}{hint}")
    elif kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern"), f"it must match {ctx.get('pattern')}")
        problems.add(*src.where(data_path), f"{where}: {value!r} is not allowed: {hint}")
    elif kind == "too_short":
        problems.add(*src.where(data_path), f"{where}: the list is empty; give at least {ctx.get('min_length', 1)} item")
    elif kind == "too_long" and data_path and data_path[-1] in _STEP_LISTS:
        count, limit = ctx.get("actual_length"), ctx.get("max_length")
        shown = f"{count:,}" if isinstance(count, int) else "too many"
        problems.add(*src.where(data_path, key=True),
                     f"{where}: {shown} steps, more than the limit of {limit:,} per list; split the workflow "
                     "into smaller ones (a `workflow` step runs another workflow as a child)")
    else:
        message = err["msg"].removeprefix("Value error, ")
        if kind in _BOUNDS:
            words = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
                     "greater_than": ("more than", "gt"), "less_than": ("less than", "lt")}[kind]
            if words[1] in ctx:
                message = f"must be {words[0]} {ctx[words[1]]}"
            message += f" (got {_shown(value, data_path, src)})"
        problems.add(*src.where(data_path), f"{where}: {message}")


def _report_type(data_path: tuple, expected: list[str], value: Any, src: Source, problems: _Collector,
                 model: str | None = None) -> None:
    """`steps[0].run: expected text or a list, got the number 1.1 (...)`."""
    message = f"{_dotted(data_path)}: expected {' or '.join(expected)}, got {_describe(value, data_path, src)}"
    written = src.texts.get(data_path)
    line, column = src.where(data_path)
    rows = problems.text.splitlines()
    at_value = rows[line - 1][column - 1:] if 0 < line <= len(rows) else ""
    if "text" in expected and at_value.lstrip().startswith("{{"):
        message += (f"; a template at the start of a value must be quoted, or YAML reads its braces as a mapping: "
                    f"write \"{at_value.strip()}\"")
    elif "text" in expected and written is not None and (expected == ["text"] or written != json.dumps(value)):
        message += f"; put it in quotes (\"{written}\") to keep it as text"
    elif model in _MODEL_HINTS:
        message += f"; {_MODEL_HINTS[model]}"
    problems.add(*src.where(data_path), message)


def _shown(value: Any, data_path: tuple, src: Source) -> str:
    """A value as the user wrote it."""
    return src.texts.get(data_path) or repr(value)


def _describe(value: Any, data_path: tuple, src: Source) -> str:
    written = src.texts.get(data_path)
    if isinstance(value, bool):
        return f"the boolean {written or value}"
    if isinstance(value, int | float):
        read = json.dumps(value)
        return f"the number {written or read}" + (f" (YAML reads {written} as {read})" if written and written != read else "")
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return f"the text {value!r}"
    return "a list" if isinstance(value, list) else "a mapping"


def _unknown_key_message(key: str, parent: tuple, data: Any,
                         model_at: Callable[[tuple], type[BaseModel] | None] = _model_at) -> str:
    model = model_at(parent)
    where = _dotted((*parent, key))
    known = d.field_names(model) if model else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close and _SYNONYMS.get(key.lower()) in known:
        close = [_SYNONYMS[key.lower()]]
    if model is d.StepSpec and not (close and close[0] not in d.KINDS):
        step = _get(data, parent)
        if isinstance(step, dict) and not any(k in step for k in d.KINDS):
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"{where}: unknown step kind '{key}'{hint} (known kinds: {', '.join(d.KINDS)})"
    hint = f"; did you mean '{close[0]}'?" if close else (f" (known keys: {', '.join(known)})" if known else "")
    return f"{where}: unknown key '{key}'{hint}"


# words other runners use for the same thing, so the hint can name ours
_SYNONYMS = {
    "depend": "needs", "depends": "needs", "depends_on": "needs", "dependencies": "needs",
    "requires": "needs", "after": "needs", "upstream": "needs",
    "if": "when", "condition": "when", "precondition": "when",
    "retries": "retry", "command": "run", "cmd": "run", "script": "run", "shell": "run",
    "args": "with", "kwargs": "with", "arguments": "with", "workdir": "cwd", "dir": "cwd",
    "environment": "env", "vars": "env", "parallelism": "max_parallel", "concurrency": "max_parallel",
    "inputs": "params", "parameters": "params", "tasks": "steps", "jobs": "steps",
    "title": "description", "label": "tags", "loop": "foreach", "for_each": "foreach",
    "with_items": "foreach", "items": "foreach", "sleep": "wait", "echo": "log", "message": "log",
    "ignore_errors": "continue_on_failure", "allow_failure": "continue_on_failure",
    "continue_on_error": "continue_on_failure", "expected_status": "expect_status",
    "status": "expect_status", "data": "json", "query": "params", "attempts": "limit",
    "count": "limit", "max_attempts": "limit", "interval": "delay", "strategy": "backoff",
}


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


HANDLER_KEYS = ("on_failure", "on_success", "finally")


def _raw_links(data: dict, key: str = "steps") -> list[tuple[str, list[str] | None]]:
    """(id, needs) of each step as written, skipping what is too malformed to use."""
    steps = data.get(key)
    links: list[tuple[str, list[str] | None]] = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        sid = step.get("id")
        needs = step.get("needs")
        if isinstance(needs, str):
            needs = [needs]
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            needs = None if "needs" not in step else []
        links.append((sid if isinstance(sid, str) else f"<{key}[{i}]>", needs))
    return links


def _check_handlers(src: Source, main_ids: set[str], problems: _Collector) -> None:
    """`on_failure`, `on_success`, `finally`: each a small graph of its own (a step without
    `needs` follows the one above it in the list), run after the main steps, so their
    templates may read any main step; ids are unique across the whole file."""
    seen = {sid: "steps" for sid in main_ids}
    for key in HANDLER_KEYS:
        links = _raw_links(src.data, key)
        if not links:
            continue
        dag = build_dag(links, src, problems, key=key)
        ids = {sid for sid, _ in links}
        for i, (sid, _) in enumerate(links):
            if sid in seen and seen[sid] != key:
                problems.add(*src.where((key, i, "id")), f"{key}[{i}].id: step id '{sid}' is already used in {seen[sid]}; ids are unique across the file")
            seen.setdefault(sid, key)
        checker = _TemplateChecker(src, dag, main_ids | ids, problems)
        for i, step in enumerate(src.data.get(key) or []):
            if isinstance(step, dict):
                checker.visit(step, (key, i), None)


def _check_success(src: Source, main_ids: list[str], problems: _Collector) -> None:
    """`success: {any_of: [...]}` names main steps; `min_succeeded` is at most their number."""
    success = src.data.get("success")
    if not isinstance(success, dict):
        return
    any_of = success.get("any_of")
    for i, sid in enumerate(any_of if isinstance(any_of, list) else []):
        if isinstance(sid, str) and sid not in main_ids:
            close = difflib.get_close_matches(sid, main_ids, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else " (handler steps never count)"
            problems.add(*src.where(("success", "any_of", i)), f"success.any_of[{i}]: there is no step '{sid}'{hint}")
    least = success.get("min_succeeded")
    if isinstance(least, int) and not isinstance(least, bool) and least > len(main_ids):
        problems.add(*src.where(("success", "min_succeeded")),
                     f"success.min_succeeded: {least} is more than the {len(main_ids)} steps of the workflow; "
                     "no run could succeed")


_STEP_LISTS = ("steps", *HANDLER_KEYS)

# keys of a step that are never templates
_SKIP_KEYS = {"id", "needs", "trigger_rule", "continue_on_failure", "retry", "timeout", "wait", "skip"}
PRECONDITIONS = "(preconditions)"  # the owner of the preconditions' templates: checked before any step


def _check_templates(src: Source, dag: Dag | None, ids: set[str], problems: _Collector) -> None:
    """Template syntax everywhere; which steps a template reads, where it may read them.

    `step_id` is the step that owns a value: it may read only the steps that run
    before it. None for the workflow's `outputs` (read at the end: any step) and
    "" for its `env` (rendered when the run starts: no step).
    """
    checker = _TemplateChecker(src, dag, ids, problems)
    raw = src.data
    checker.visit(raw.get("env"), ("env",), "")
    steps = raw.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        sid = step.get("id") if isinstance(step, dict) else None
        checker.visit(step, ("steps", i), sid if isinstance(sid, str) else f"<steps[{i}]>")
    for key in ("outputs", "triggers"):
        if isinstance(raw.get(key), dict):
            checker.visit(raw[key], (key,), None)
    checker.visit(raw.get("preconditions"), ("preconditions",), PRECONDITIONS)


class _TemplateChecker:
    def __init__(self, src: Source, dag: Dag | None, ids: set[str], problems: _Collector):
        self.src, self.dag, self.ids, self.problems = src, dag, ids, problems
        raw = src.data if isinstance(src.data, dict) else {}
        params, env, secrets = raw.get("params"), raw.get("env"), raw.get("secrets")
        # what a template may name: None when the file's own declaration is malformed (reported apart)
        self.declared: dict[str, set[str] | None] = {
            "params": set(params) if isinstance(params, dict) else (set() if params is None else None),
            "env": set(env) if isinstance(env, dict) else (set() if env is None else None),
            "secrets": {s for s in secrets if isinstance(s, str)} if isinstance(secrets, list)
            else (set() if secrets is None else None),
        }

    def visit(self, value: Any, path: tuple, step_id: str | None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if len(path) == 2 and path[0] in _STEP_LISTS and k in _SKIP_KEYS:
                    continue
                # a compensation runs after the run failed: it may read any step, its own too
                self.visit(v, (*path, k), None if len(path) == 2 and k == "compensate" else step_id)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.visit(v, (*path, i), step_id)
        elif isinstance(value, str) and ("{{" in value or "{%" in value):
            try:
                check_template(value)
            except TemplateSyntax as exc:
                self.problems.add(*self._at(path, exc.lineno), f"{_dotted(path)}: template error: {exc.message}")
                return
            for ref, lineno in step_refs(value):
                message = _ref_problem(ref, step_id, self.dag, self.ids)
                if message:
                    self.problems.add(*self._at(path, lineno), f"{_dotted(path)}: refers to steps.{ref}, {message}")
            if path[0] not in ("triggers", "notify"):  # their templates see the trigger's data, not these
                self._check_names(value, path)

    def _check_names(self, value: str, path: tuple) -> None:
        """`params.x`, `env.X`, `secrets.X` must name what the file declares (else the
        run fails on it with Jinja's "'dict object' has no attribute ...")."""
        for root, segments, lineno in name_refs(value):
            kind = "params" if root == "trigger" else root
            declared = self.declared.get(kind)
            if declared is None or not segments or not isinstance(segments[0], str) or segments[0] in declared:
                continue
            if root == "trigger" and segments[0] == "scheduled_at":  # the slot of a schedule's (or backfill's) run
                continue
            name = segments[0]
            if kind == "env" and path[0] == "env":
                message = "but `env` is rendered before itself; use the value, or a param"
            else:
                what = {"params": "param", "env": "env variable", "secrets": "secret"}[kind]
                close = difflib.get_close_matches(name, sorted(declared), n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"declare it under `{kind}:`"
                message = f"but the workflow declares no {what} '{name}'; {fix}"
            self.problems.add(*self._at(path, lineno), f"{_dotted(path)}: refers to {root}.{name}, {message}")

    def _at(self, path: tuple, lineno: int) -> tuple[int, int]:
        """Where line `lineno` of the template at `path` is written. Only a `|` or `>`
        block keeps the file's lines; in a quoted or plain value a line break comes
        from an escape (`"a\\nb"`) or an empty line, so the value's start is shown."""
        if lineno > 1 and path not in self.src.blocks:
            return self.src.where(path)
        line, column = self.src.where_in(path, lineno)
        if line > self.problems.lines:  # never past the end of the file
            return self.src.where(path)
        return line, column


def _ref_problem(ref: str, step_id: str | None, dag: Dag | None, ids: set[str]) -> str | None:
    """What is wrong with a template of `step_id` reading `steps.<ref>`, or None."""
    if ref not in ids:
        dashed = [i for i in ids if i.startswith(f"{ref}-")]
        if dashed:  # `steps.my-step` reads as `steps.my - step`
            return f"but there is no step '{ref}'; write steps['{dashed[0]}'] for an id with '-'"
        close = difflib.get_close_matches(ref, sorted(ids), n=1)
        return f"but there is no step '{ref}'" + (f"; did you mean '{close[0]}'?" if close else "")
    if step_id == "":
        return "but env is rendered when the run starts, before any step; move it to the env of a step that needs it"
    if step_id == PRECONDITIONS:
        return ("but preconditions are checked when the run starts, before any step; use a step's `when` "
                "to decide on a step's output")
    if step_id is None or dag is None or step_id not in dag.dependents:
        return None
    if ref == step_id:
        return "the step itself; a step can only read steps that finished before it"
    if not dag.runs_before(ref, step_id):
        return f"which does not run before '{step_id}'; add '{ref}' to its needs"
    return None


_TEXT_VALUES = (("env",), ("steps", int, "env"), ("steps", int, "http", "headers"))


def _check_run_limits(src: Source, problems: _Collector) -> None:
    """Limits a run would hit for sure, reported at load: a literal `foreach` list that is
    too long, a `wait` or `approval.timeout` of a main step longer than the run may last."""
    raw = src.data
    # a run without `timeout` has the default limit: a longer wait cannot end (with a
    # `timeout`, the author chose it; it is at most MAX_RUN_TIMEOUT, checked by the model)
    capped = raw.get("timeout") is None
    longer = (f"a run without `timeout` may last ({duration_text(DEFAULT_RUN_TIMEOUT)}); set the workflow's "
              f"`timeout` (at most {duration_text(MAX_RUN_TIMEOUT)}) or wait less")
    for key in _STEP_LISTS:
        steps = raw.get(key)
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            if not isinstance(step, dict):
                continue
            items, at = step.get("foreach"), (key, i, "foreach")
            if isinstance(items, dict):  # foreach: {items: ..., max_parallel: N}
                items, at = items.get("items"), (*at, "items")
            if isinstance(items, list) and len(items) > MAX_FOREACH_ITEMS:
                problems.add(*src.where(at, key=True),
                             f"{key}[{i}].foreach: {len(items):,} items, more than the limit of "
                             f"{MAX_FOREACH_ITEMS:,} per step; split the list into batches (e.g. one child "
                             "`workflow` run per batch)")
            if key != "steps" or not capped:  # handlers run after the main steps, outside the run's timeout
                continue
            approval = step.get("approval")
            for at, value in (((key, i, "wait"), step.get("wait")),
                              ((key, i, "approval", "timeout"), approval.get("timeout") if isinstance(approval, dict) else None)):
                try:
                    seconds = parse_duration(value) if value is not None else None
                except ValueError:  # reported by the model
                    continue
                if seconds is not None and seconds > DEFAULT_RUN_TIMEOUT:
                    problems.add(*src.where(at), f"{_dotted(at)}: {duration_text(seconds)} is longer than {longer}")


def _check_text_values(src: Source, problems: _Collector) -> None:
    """Values that end up as text (environment variables, headers) but YAML read as numbers.

    `VERSION: 1.10` would become "1.1" and `MODE: 0o17` "15": the YAML 1.1 traps
    that must not silently change a value's meaning.
    """
    for path, written in src.texts.items():
        if not any(_matches(path[:-1], pattern) for pattern in _TEXT_VALUES):
            continue
        try:
            read = json.dumps(_get(src.data, path))
        except (KeyError, IndexError, TypeError):  # replaced by a later duplicate key
            continue
        if read != written:
            problems.add(*src.where(path), f"{_dotted(path)}: YAML reads {written} as {read}, so the value would be '{read}'; put it in quotes (\"{written}\") to keep it as written")


def _matches(path: tuple, pattern: tuple) -> bool:
    return len(path) == len(pattern) and all(p == q or (q is int and isinstance(p, int)) for p, q in zip(path, pattern, strict=True))
