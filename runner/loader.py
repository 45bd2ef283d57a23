"""One definition file -> a Definition, or every problem in it with its position.

The loader never stops at the first problem: YAML syntax, unknown and missing keys,
types, durations, duplicate step ids, `needs` naming a missing step, cycles, template
syntax and references to steps that do not run earlier are all collected, each as a
Problem (`path:line:column: message`) naming the field.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import definition as d
from .dag import Dag, build_dag
from .errors import Problem
from .templates import TemplateSyntax, check_template
from .yaml_source import Source, YamlSyntaxError, parse

MAX_FILE_BYTES = 1_000_000


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
    base_dir: Path = field(default_factory=Path.cwd)  # cwd for `run` steps

    @property
    def valid(self) -> bool:
        return self.spec is not None and not self.problems


def version_of(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def load_file(path: Path, shown_as: str | None = None) -> Definition:
    """Load one file; problems are collected, never raised."""
    shown = shown_as or str(path)
    name = path.stem
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_FILE_BYTES:
            return _failed(name, shown, "", f"file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _failed(name, shown, "", f"file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        return _failed(name, shown, "", f"cannot read file: {exc.strerror}")
    return load_text(text, shown, name=name, base_dir=path.parent)


def load_text(text: str, path: str, *, name: str | None = None, base_dir: Path | None = None) -> Definition:
    """Load a definition from text; `path` is used in messages and `name` is the default name."""
    result = Definition(
        name=name or Path(path).stem, path=path, source=text, version=version_of(text),
        base_dir=base_dir or Path.cwd(),
    )
    problems = _Collector(path)
    try:
        src = parse(text)
    except YamlSyntaxError as exc:
        result.problems = [Problem(path, exc.line, exc.column, exc.args[0])]
        return result
    for dup_path, line, col in src.duplicates:
        problems.add(line, col, f"{_dotted(dup_path)}: key written twice; the last one would win")
    if not isinstance(src.data, dict):
        what = "empty" if src.data is None else f"a {type(src.data).__name__}"
        problems.add(1, 1, f"the file is {what}; a workflow is a mapping with at least 'steps'")
        result.problems = problems.items
        return result
    if isinstance(src.data.get("name"), str):
        result.name = src.data["name"]
    spec: d.WorkflowSpec | None = None
    try:
        spec = d.WorkflowSpec.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors():
            _report_validation(err, src, problems)
    # the graph and templates are checked even when some keys are wrong, so that
    # one pass over a file shows every problem in it
    dag = build_dag(_raw_links(src.data), src, problems)
    _check_templates(src, dag, problems)
    result.problems = problems.items
    if not result.problems and spec is not None:
        result.spec, result.dag = spec, dag
    return result


def _failed(name: str, path: str, source: str, message: str) -> Definition:
    return Definition(name=name, path=path, source=source, version=version_of(source),
                      problems=[Problem(path, 1, 1, message)])


class _Collector:
    def __init__(self, path: str):
        self.path = path
        self.items: list[Problem] = []

    def add(self, line: int, column: int, message: str) -> None:
        problem = Problem(self.path, line, column, message)
        if problem not in self.items:
            self.items.append(problem)
            self.items.sort(key=lambda p: (p.line, p.column))


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(data_path: tuple) -> type[BaseModel] | None:
    """Which model describes the mapping at `data_path` (for key suggestions)."""
    shape: list[Any] = [d.WorkflowSpec]
    model: Any = d.WorkflowSpec
    for part in data_path:
        if model is None:
            return None
        if isinstance(part, int):
            model = d.StepSpec if shape[-1] == "steps" else None
        else:
            model = {
                (d.WorkflowSpec, "defaults"): d.DefaultsSpec,
                (d.WorkflowSpec, "steps"): "steps",
                (d.StepSpec, "http"): d.HttpSpec,
                (d.StepSpec, "retry"): d.RetrySpec,
                (d.DefaultsSpec, "retry"): d.RetrySpec,
            }.get((model, part))
            if model is None and shape[-1] is d.WorkflowSpec and part == "params":
                model = "params"
            elif shape[-1] == "params":
                model = d.ParamSpec
        shape.append(model)
    return model if isinstance(model, type) else None


def _data_path(loc: tuple, data: Any) -> tuple:
    """Keep the parts of a pydantic `loc` that walk the data (drop union tags)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
    return tuple(out)


def _report_validation(err: dict, src: Source, problems: _Collector) -> None:
    kind = err["type"]
    data_path = _data_path(err["loc"], src.data)
    where = _dotted(data_path)
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        parent = data_path[:-1] if data_path and data_path[-1] == key else data_path
        line, col = src.where((*parent, key), key=True)
        problems.add(line, col, _unknown_key_message(key, parent, src.data))
        return
    if kind == "missing":
        field_name = err["loc"][-1]
        line, col = src.where(data_path)
        problems.add(line, col, f"{where}: missing required key '{field_name}'")
        return
    line, col = src.where(data_path)
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if kind in {"string_type"} and isinstance(value, int | float | bool):
        message += f" (got {value!r}; put quotes around it to keep it as text)"
    elif kind == "literal_error" or kind == "string_pattern_mismatch":
        message += f" (got {value!r})"
    problems.add(line, col, f"{where}: {message}")


def _unknown_key_message(key: str, parent: tuple, data: Any) -> str:
    model = _model_at(parent)
    where = _dotted((*parent, key))
    if model is d.StepSpec:
        step = _get(data, parent)
        if isinstance(step, dict) and not any(k in step for k in d.KINDS):
            close = difflib.get_close_matches(key, d.KINDS, n=1)
            if not close and _SYNONYMS.get(key.lower()) in d.KINDS:
                close = [_SYNONYMS[key.lower()]]
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"{where}: unknown step kind '{key}'{hint} (known kinds: {', '.join(d.KINDS)})"
    known = d.field_names(model) if model else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close and _SYNONYMS.get(key.lower()) in known:
        close = [_SYNONYMS[key.lower()]]
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


def _raw_links(data: dict) -> list[tuple[str, list[str] | None]]:
    """(id, needs) of each step as written, skipping what is too malformed to use."""
    steps = data.get("steps")
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
        links.append((sid if isinstance(sid, str) else f"<steps[{i}]>", needs))
    return links


_STEP_REF = re.compile(r"\bsteps\s*(?:\.\s*([A-Za-z0-9_]+)|\[\s*['\"]([A-Za-z0-9_-]+)['\"]\s*\])")
_SKIP_KEYS = {"id", "needs", "trigger_rule", "continue_on_failure", "retry", "timeout", "wait"}


def _check_templates(src: Source, dag: Dag | None, problems: _Collector) -> None:
    """Template syntax everywhere; step references only when the graph is sound."""

    def visit(value: Any, path: tuple, step_id: str | None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not (len(path) == 2 and k in _SKIP_KEYS):
                    visit(v, (*path, k), step_id)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                visit(v, (*path, i), step_id)
        elif isinstance(value, str) and ("{{" in value or "{%" in value):
            line, col = src.where(path)
            try:
                check_template(value)
            except TemplateSyntax as exc:
                problems.add(line + exc.lineno - 1, col, f"{_dotted(path)}: template error: {exc.message}")
                return
            if dag is None:
                return
            for m in _STEP_REF.finditer(value):
                ref = m.group(1) or m.group(2)
                if ref not in dag.dependents:
                    close = difflib.get_close_matches(ref, list(dag.dependents), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    problems.add(line, col, f"{_dotted(path)}: refers to steps.{ref}, but there is no step '{ref}'{hint}")
                elif step_id is not None and ref not in dag.ancestors(step_id):
                    problems.add(line, col, f"{_dotted(path)}: refers to steps.{ref}, which does not run before '{step_id}'; add '{ref}' to its needs")

    raw = src.data
    for key in ("env",):
        visit(raw.get(key), (key,), None)
    steps = raw.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        sid = step.get("id") if isinstance(step, dict) else None
        visit(step, ("steps", i), sid if isinstance(sid, str) else None)
    if isinstance(raw.get("outputs"), dict):
        visit(raw["outputs"], ("outputs",), None)
