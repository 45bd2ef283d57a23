"""A workflow's test file (`NAME.test.yaml` next to `NAME.yaml`): cases, mocks, expectations.

A test file is not a workflow: the catalog never loads it as one (`is_test_file`),
`treadle validate` checks it with the rules here and `treadle test` runs it. Its
problems come out like a workflow file's, `path:line:column: message`, from the
same YAML reader and the same pydantic error reporting (loader.py).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..errors import Problem
from ..limits import MAX_FILE_BYTES
from . import definition as d
from .loader import Definition, _Collector, _dotted, _report_validation, _too_big, _yaml_hint
from .yaml_source import Source, YamlSyntaxError, parse

TEST_SUFFIXES = (".test.yaml", ".test.yml")


def is_test_file(path: Path | str) -> bool:
    """`x.test.yaml` / `x.test.yml`: a test file, never a workflow."""
    return str(path).endswith(TEST_SUFFIXES)


def workflow_file_of(path: Path) -> list[Path]:
    """The workflow files a test file is named after: `a/x.test.yaml` -> a/x.yaml, a/x.yml."""
    stem = path.name[: -len(next(s for s in TEST_SUFFIXES if path.name.endswith(s)))]
    return [path.with_name(stem + ".yaml"), path.with_name(stem + ".yml")]


def test_file_beside(root: Path, workflow_path: str) -> str | None:
    """The test file next to the workflow file `workflow_path` (relative to `root`), as a
    path relative to `root`, or None (what the dashboard and the API show)."""
    file = root / workflow_path
    stem = file.name.rsplit(".", 1)[0]
    for suffix in TEST_SUFFIXES:
        if file.with_name(stem + suffix).is_file():
            return (Path(workflow_path).parent / (stem + suffix)).as_posix()
    return None


class _Model(BaseModel):
    model_config = d._Model.model_config


class MockSpec(_Model):
    """What a mocked step answers instead of executing (nothing runs: no side effects)."""

    output: Any = Field(None, description="the step's output (templates see item, index, params, steps)")
    exit_code: int | None = Field(None, description="a run step's exit code; not 0: the step fails")
    http_status: int | None = Field(None, ge=100, le=599, description="an http step's status; outside "
                                                                      "expect_status (default 2xx): the step fails")
    error: str | None = Field(None, description="the step fails with this error")
    real: bool = Field(False, description="execute the step for real (overrides the file's `mock:`)")

    @model_validator(mode="after")
    def _real_alone(self) -> MockSpec:
        if self.real and len(self.model_fields_set - {"real"}) > 0:
            extra = sorted(self.model_fields_set - {"real"})[0]
            raise d._error_at(extra, f"'{extra}' has no effect with `real: true` (the step executes); remove one")
        return self


def mock_lists(value: Any) -> Any:
    """`mock: {x: {...}}` answers every attempt; a list answers attempt by attempt (the last repeats)."""
    if not isinstance(value, dict):
        return value
    return {k: v if isinstance(v, list) else [v] for k, v in value.items()}


Mocks = dict[str, list[MockSpec]]


class StepExpect(_Model):
    status: Literal["succeeded", "failed", "skipped", "upstream_failed", "cancelled"] | None = None
    output: Any = Field(None, description="the step's output, exactly")
    output_has: dict[str, Any] | None = Field(None, description="keys the output (a mapping) has, with these values")
    error: str | None = Field(None, description="text the step's error contains")
    exit_code: int | None = None
    attempts: int | None = Field(None, ge=0, description="attempts made (0: it never started)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"status": value} if isinstance(value, str) else value


class RunExpect(_Model):
    status: Literal["succeeded", "failed", "cancelled", "skipped", "refused"] = Field(
        "succeeded", description="the run's state; `refused`: the run may not start (params, secrets, "
                                 "`enabled: false`)")
    error: str | None = Field(None, description="text the run's error (the refusal, the skip's reason) contains")
    outputs: Any = Field(None, description="the run's outputs, exactly")
    outputs_has: dict[str, Any] | None = Field(None, description="keys the outputs have, with these values")
    steps: dict[str, StepExpect] = Field(default_factory=dict)
    ran: list[str] = Field(default_factory=list, description="steps that executed (or were answered by a mock)")
    not_ran: list[str] = Field(default_factory=list, description="steps that never executed")


class TriggerCase(_Model):
    """What a trigger would hand the run: its `params:` templates are rendered over it."""

    event: dict[str, Any] | None = Field(None, description="{type, data}: as POST /api/events")
    webhook: dict[str, Any] | None = Field(None, description="{body, headers, query}: as POST /hooks/NAME")
    file: dict[str, Any] | None = Field(None, description="{path, name, size}: a file trigger's file")

    @model_validator(mode="after")
    def _one(self) -> TriggerCase:
        given = [k for k in ("event", "webhook", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of event, webhook, file, e.g. trigger: {event: {type: x, data: {}}}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("event", "webhook", "file") if getattr(self, k) is not None)


class CaseSpec(_Model):
    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerCase | None = None
    secrets: dict[str, str] = Field(default_factory=dict, description="values of the workflow's secrets "
                                                                      "(default: a placeholder per secret)")
    mock: dict[str, list[MockSpec]] = Field(default_factory=dict)
    expect: RunExpect = Field(default_factory=RunExpect)

    @field_validator("mock", mode="before")
    @classmethod
    def _mocks(cls, value: Any) -> Any:
        return mock_lists(value)

    @model_validator(mode="after")
    def _params_or_trigger(self) -> CaseSpec:
        if self.trigger is not None and "params" in self.model_fields_set:
            raise d._error_at("params", "give params or a trigger, not both (the trigger's params: templates "
                                        "make the params)")
        return self


class TestFileSpec(_Model):
    __test__ = False  # not a pytest class

    workflow: str | None = Field(None, description="the workflow's name; default: the file this one is named after")
    mock: dict[str, list[MockSpec]] = Field(default_factory=dict, description="mocks for every case")
    cases: list[CaseSpec] = Field(min_length=1)

    @field_validator("mock", mode="before")
    @classmethod
    def _mocks(cls, value: Any) -> Any:
        return mock_lists(value)


_MODELS: dict[tuple[type, str], Any] = {
    (TestFileSpec, "cases"): "cases", (TestFileSpec, "mock"): "mock", (CaseSpec, "mock"): "mock",
    (CaseSpec, "expect"): RunExpect, (CaseSpec, "trigger"): TriggerCase, (RunExpect, "steps"): "steps",
}


def _model_at(path: tuple) -> type[BaseModel] | None:
    """Which model describes the mapping at `path` of a test file (for key suggestions)."""
    model: Any = TestFileSpec
    for part in path:
        if model == "cases" and isinstance(part, int):
            model = CaseSpec
        elif model == "mock":
            model = "mock-step"
        elif model == "mock-step":
            model = MockSpec  # one answer, or an item of the list of answers
        elif model == "steps":
            model = StepExpect
        elif isinstance(model, type):
            model = _MODELS.get((model, part))
        else:
            return None
    return model if isinstance(model, type) else None


@dataclass
class CaseFile:
    """A loaded test file: its spec when valid, else every problem in it."""

    path: str
    spec: TestFileSpec | None = None
    definition: Definition | None = None  # the workflow it tests
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.definition.name if self.definition else Path(self.path).name


def load_case_file(path: Path, shown: str, find: Any) -> CaseFile:
    """Load `path` and check it against its workflow. `find(name_or_None, path)` returns
    the workflow's Definition: by `workflow:` name, or the file the test file is named after."""
    result = CaseFile(path=shown)
    problems = _Collector(shown)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            result.problems = [Problem(shown, 1, 1, _too_big(path.stat().st_size))]
            return result
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.problems = [Problem(shown, 1, 1, f"cannot read the test file: {exc}")]
        return result
    problems = _Collector(shown, text)
    try:
        src = parse(text)
    except YamlSyntaxError as exc:
        problems.add(exc.line, exc.column, exc.args[0] + _yaml_hint(text, exc.line, exc.args[0]))
        result.problems = problems.items
        return result
    if not isinstance(src.data, dict):
        problems.add(1, 1, "a test file is a mapping with `cases:`, e.g. cases: [{name: greets, params: {name: Ada}}]")
        result.problems = problems.items
        return result
    try:
        result.spec = TestFileSpec.model_validate(src.data)
    except ValidationError as exc:
        _report_validation(exc.errors(), src, problems, _model_at)
    named = src.data.get("workflow") if isinstance(src.data.get("workflow"), str) else None
    result.definition = find(named, path)
    if result.definition is None:
        where = src.where(("workflow",)) if named else (1, 1)
        wanted = f"no workflow named '{named}'" if named else (
            f"no workflow file {' or '.join(p.name for p in workflow_file_of(path))} next to it")
        problems.add(*where, f"{wanted}; a test file `NAME.test.yaml` tests the workflow in `NAME.yaml` beside it "
                             "(or name it with `workflow:`)")
    elif result.definition.spec is None:
        first = result.definition.problems[0] if result.definition.problems else None
        problems.add(1, 1, f"the workflow '{result.definition.name}' ({result.definition.path}) has problems; "
                           f"fix them first (treadle validate){f': {first}' if first else ''}")
    else:
        _check_against(src, result.definition.spec, problems)
    result.problems = problems.items
    if result.problems:
        result.spec = None
    return result


def _check_against(src: Source, workflow: d.WorkflowSpec, problems: _Collector) -> None:
    """Step ids, params and triggers named by the cases must exist in the workflow. Read
    from the file as written, so that they are reported even when other keys are wrong."""
    ids = [s.id for s in (*workflow.steps, *workflow.on_failure, *workflow.on_success, *workflow.finally_)]

    def step(sid: Any, at: tuple) -> None:
        if isinstance(sid, str) and sid not in ids:
            close = difflib.get_close_matches(sid, ids, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (its steps: {', '.join(ids)})"
            problems.add(*src.where(at, key=at[-1] == sid), f"{_dotted(at)}: the workflow has no step '{sid}'{hint}")

    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    raw = src.data
    for sid in mapping(raw.get("mock")):
        step(sid, ("mock", sid))
    cases = raw.get("cases") if isinstance(raw.get("cases"), list) else []
    names: list[Any] = []
    for i, case in enumerate(cases):
        case = mapping(case)
        for sid in mapping(case.get("mock")):
            step(sid, ("cases", i, "mock", sid))
        expect = mapping(case.get("expect"))
        for sid in mapping(expect.get("steps")):
            step(sid, ("cases", i, "expect", "steps", sid))
        for key in ("ran", "not_ran"):
            listed = expect.get(key)
            for j, sid in enumerate(listed if isinstance(listed, list) else []):
                step(sid, ("cases", i, "expect", key, j))
        for name in mapping(case.get("params")):
            if name not in workflow.params:
                close = difflib.get_close_matches(name, list(workflow.params), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else " (declare it under the workflow's `params:`)"
                problems.add(*src.where(("cases", i, "params", name), key=True),
                             f"cases[{i}].params: the workflow has no param '{name}'{hint}")
        for kind in mapping(case.get("trigger")):
            if kind in ("event", "webhook", "file") and not getattr(workflow.triggers, kind):
                problems.add(*src.where(("cases", i, "trigger", kind), key=True),
                             f"cases[{i}].trigger.{kind}: the workflow has no `{kind}` trigger")
        name = case.get("name")
        if isinstance(name, str) and name in names:
            problems.add(*src.where(("cases", i, "name")),
                         f"cases[{i}].name: '{name}' is also the name of cases[{names.index(name)}]; "
                         "names tell the cases apart in reports")
        names.append(name)
