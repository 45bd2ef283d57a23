"""The definition file format as pydantic models (SPEC §1).

The models mirror the YAML exactly (`extra="forbid"`), so an unknown key is an
error, and they are the single source of the JSON Schema (`treadle schema`).
Durations are stored as seconds. Shorthands (`retry: 3`, `needs: a`,
`expect_status: 200`, `param: string`) are widened here so the engine sees one form.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..limits import (
    DEFAULT_RUN_TIMEOUT,
    MAX_LOCK_LIMIT,
    MAX_PARALLEL,
    MAX_REPEAT,
    MAX_RETRIES,
    MAX_RUN_TIMEOUT,
    MAX_STEPS,
    duration_text,
)
from .durations import parse_duration
from .params import coerce
from .trigger_spec import ConcurrencySpec, NotifySpec, TriggersSpec

KINDS = ("run", "http", "python", "set", "wait", "log", "workflow", "approval")
TRIGGER_RULES = ("all_succeeded", "all_done", "any_succeeded", "any_failed")
PARAM_TYPES = ("string", "number", "integer", "boolean", "array", "object")
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
STEP_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

def _a_number(seconds: float) -> float:
    if seconds != seconds:  # `.nan`: a step would time out at once, a `wait` never end
        raise ValueError("the duration is not a number (.nan); write e.g. 30s")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_a_number)]


def _error_at(key: str, message: str) -> PydanticCustomError:
    """A model-level error that the loader reports at `key` inside the model's mapping."""
    return PydanticCustomError("misplaced", message, {"at": key})


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class RetrySpec(_Model):
    limit: int = Field(0, ge=0, le=MAX_RETRIES, description="retries after the first attempt")
    backoff: Literal["none", "fixed", "linear", "exponential"] = "fixed"
    delay: Duration = Field(1.0, description="base delay between attempts")
    max_delay: Duration = Field(300.0, description="upper bound of any one delay")
    on: list[int] | None = Field(
        None, description="retry only for these exit codes or HTTP statuses"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"limit": value}
        return value

    @field_validator("on", mode="before")
    @classmethod
    def _on_list(cls, value: Any) -> Any:
        return _as_list(value)

    def delay_before(self, retry_number: int) -> float:
        """Seconds to wait before retry number `retry_number` (1 = first retry)."""
        if self.backoff == "none":
            return 0.0
        factor = {"fixed": 1, "linear": retry_number, "exponential": 2 ** (retry_number - 1)}
        return min(self.delay * factor[self.backoff], self.max_delay)


class ParamSpec(_Model):
    # `type` and `enum` come before `default`: validators of later fields see them
    type: Literal["string", "number", "integer", "boolean", "array", "object"] = "string"
    required: bool = False
    description: str | None = None
    enum: list[Any] | None = None
    default: Any = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("enum")
    @classmethod
    def _enum_typed(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if value is not None and "type" in info.data:
            plain = ParamSpec.model_construct(type=info.data["type"])
            value = [_coerce_default(plain, item, "enum value") for item in value]
        return value

    @field_validator("default")
    @classmethod
    def _default_typed(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or "type" not in info.data:
            return value  # no default, or the type itself is wrong (reported there)
        spec = ParamSpec.model_construct(type=info.data["type"], enum=info.data.get("enum"))
        return _coerce_default(spec, value, "default")


def _coerce_default(spec: ParamSpec, value: Any, what: str) -> Any:
    try:
        return coerce("", spec, value, from_text=False)
    except ValueError as exc:
        raise ValueError(f"the {what} does not fit the param: {exc}") from None


class HttpSpec(_Model):
    method: str = "GET"
    url: str
    headers: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict, description="query string")
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    form: dict[str, Any] | None = None
    expect_status: list[int] | None = Field(None, description="default: any 2xx")
    timeout: Duration | None = None

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}:
            raise ValueError(f"unknown HTTP method '{value}'")
        return method

    @model_validator(mode="after")
    def _one_body(self) -> HttpSpec:
        given = [k for k in ("json", "body", "form") if self.model_fields_set & {_F[k]}]
        if len(given) > 1:
            raise _error_at(given[1], f"give only one of json, body, form (got {', '.join(given)}); remove '{given[1]}'")
        return self


_F = {"json": "json_body", "body": "body", "form": "form"}


class CircuitBreakerSpec(_Model):
    key: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                            description="share one breaker among every step with this key (several hosts or "
                                        "paths of one service); default: one per host")
    failures: int = Field(5, ge=1, le=10_000, description="failures in a row that open the circuit")
    reset_after: Duration = Field(30.0, description="how long the circuit stays open before a trial call")
    half_open_max: int = Field(1, ge=1, le=1000, description="trial calls let through at once while half-open")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6, "g": 10**9,
               "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> float:
    """Bytes of a size as written: `4GiB`, `512MiB`, `2GB`, or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}; write e.g. 4GiB, 512MiB or a number of bytes")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"size {value} must be more than 0")
        return float(value)
    found = _SIZE.match(str(value))
    if not found:
        raise ValueError(f"invalid size {value!r}; write e.g. 4GiB, 512MiB, 2GB or a number of bytes")
    return float(found.group(1)) * _SIZE_UNITS[(found.group(2) or "b").lower()]


class ResourcesSpec(_Model):
    """What a step needs of a cluster worker: it runs only on a worker that offers it."""

    cpu: float | None = Field(None, gt=0, description="CPU cores")
    memory: float | str | None = Field(None, description="bytes, or 4GiB, 512MiB, 2GB")
    gpu: float | None = Field(None, gt=0, description="GPUs")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: Any) -> float | None:
        return None if value is None else parse_size(value)


class ApprovalSpec(_Model):
    """A person approves or rejects from the dashboard or the API; the run waits."""

    message: str = Field(description="what the person is asked (a template)")
    timeout: Duration | None = Field(None, description="no decision by then: the step fails")


class ForeachSpec(_Model):
    """`foreach: {items: ..., max_parallel: 4}`: the list, and how many of its items may go at once."""

    items: str | list[Any] = Field(description="a template giving a list (or mapping), or a literal list")
    max_parallel: int | None = Field(None, ge=1, le=MAX_PARALLEL,
                                     description="items of this step in progress at once (within the run's "
                                                 "max_parallel); default: only the run's limit")


class RepeatSpec(_Model):
    """Poll: the step runs again, every `interval`, until `until` is true of its output."""

    until: str = Field(description="a template, true when done; sees `output` (this attempt's) and `attempt`")
    interval: Duration = Field(10.0, description="the wait between two polls")
    limit: int = Field(60, ge=1, le=MAX_REPEAT, description="polls at most; still false then: the step fails")


CLUSTER_KINDS = ("run", "python", "http")  # the kinds a cluster worker may execute


class LockSpec(_Model):
    """A shared lock (a mutex, or a semaphore of `limit` holders) across workflows and
    servers: `locks: [warehouse]` or `locks: [{name: warehouse, limit: 2}]`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$",
                      description="the lock's name, shared by every workflow that names it")
    limit: int = Field(1, ge=1, le=MAX_LOCK_LIMIT, description="holders at once (1: a mutex)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _unique_locks(locks: list[LockSpec]) -> list[LockSpec]:
    names = [lock.name for lock in locks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"lock '{twice[0]}' is listed twice; name each lock once")
    return locks


Locks = Annotated[list[LockSpec], AfterValidator(_unique_locks)]


class StepSpec(_Model):
    id: str = Field(pattern=STEP_ID_PATTERN)
    needs: list[str] | None = Field(
        None, description="steps this one waits for; left out: the step above it"
    )
    when: str | bool | None = None
    skip: Literal["self", "cascade"] = Field(
        "self", description="cascade: when this step ends skipped (its `when`, its trigger rule), the steps that "
                            "need it are skipped too, and theirs in turn; self (the default): only this step")
    trigger_rule: Literal["all_succeeded", "all_done", "any_succeeded", "any_failed"] = (
        "all_succeeded"
    )
    continue_on_failure: bool = False
    retry: RetrySpec | None = None
    timeout: Duration | None = None
    foreach: str | list[Any] | ForeachSpec | None = None
    repeat: RepeatSpec | None = Field(None, description="poll until a condition holds, each poll an attempt")
    env: dict[str, Any] = Field(default_factory=dict)
    cwd: str | None = None
    locks: Locks = Field(default_factory=list, description="shared locks the step holds (waits for) while it runs")
    circuit_breaker: CircuitBreakerSpec | None = Field(
        None, description="http steps: per-host circuit breaker; default: defaults.circuit_breaker"
    )
    # the kinds: exactly one of these is given
    run: str | list[str] | None = None
    http: HttpSpec | None = None
    python: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    set: dict[str, Any] | None = None
    wait: Duration | None = None
    log: str | None = None
    workflow: str | None = None
    approval: ApprovalSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    compensate: CompensationSpec | None = Field(
        None, description="undoes this step when the run fails after it succeeded (any step kind)"
    )
    executor: Literal["local", "cluster"] | None = Field(
        None, description="run, python and http steps: `local` keeps the step on the server when Treadle "
                          "executes steps on a cluster; default: the workflow's"
    )
    resources: ResourcesSpec | None = Field(None, description="cluster steps: what the worker must offer")
    labels: list[str] = Field(default_factory=list, description="cluster steps: run only on workers with these labels")
    placement_timeout: Duration | None = Field(
        None, description="cluster steps: fail when no worker has taken the step by then (default 10m)")

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("python")
    @classmethod
    def _python_target(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
            raise ValueError(f"'{value}' is not 'package.module:function'")
        return value

    @field_validator("run")
    @classmethod
    def _run_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and not value:
            raise ValueError("the command is empty")
        return value

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def foreach_items(self) -> str | list[Any] | None:
        """The foreach list as written (either form), or None."""
        return self.foreach.items if isinstance(self.foreach, ForeachSpec) else self.foreach

    @property
    def foreach_limit(self) -> int | None:
        return self.foreach.max_parallel if isinstance(self.foreach, ForeachSpec) else None

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if not kinds:
            raise ValueError(f"the step has no kind; give one of: {', '.join(KINDS)}")
        if len(kinds) > 1:
            raise _error_at(kinds[1], f"a step has exactly one kind, this one has {' and '.join(kinds)}; split it into {len(kinds)} steps (known kinds: {', '.join(KINDS)})")
        kind = kinds[0]
        for extra, owner in (("cwd", "run"), ("env", "run"), ("with", "python"), ("params", "workflow"),
                             ("circuit_breaker", "http")):
            field = "with_" if extra == "with" else extra
            if field in self.model_fields_set and kind != owner:
                raise _error_at(extra, f"'{extra}' only applies to '{owner}' steps, not '{kind}'; remove it")
        if self.repeat is not None and kind == "approval":
            raise _error_at("repeat", "'repeat' does not apply to 'approval' steps (a person decides once); remove it")
        if kind not in CLUSTER_KINDS:
            for key in ("executor", "resources", "labels", "placement_timeout"):
                if key in self.model_fields_set:
                    raise _error_at(key, f"'{key}' only applies to run, python and http steps (a '{kind}' step "
                                         "always runs on the server); remove it")
        return self


class CompensationSpec(StepSpec):
    """What undoes a step (a step without id, needs or scheduling of its own)."""

    id: str | None = Field(None, pattern=STEP_ID_PATTERN)  # set by the engine: `<step>.compensate`

    @model_validator(mode="after")
    def _no_scheduling(self) -> CompensationSpec:
        for key in ("needs", "when", "skip", "foreach", "compensate", "trigger_rule", "continue_on_failure"):
            if key in self.model_fields_set:
                raise _error_at(key, f"'{key}' is not allowed in 'compensate' (it runs when the run fails, "
                                     "in reverse order of the steps that succeeded); remove it")
        return self


StepSpec.model_rebuild()


class PreconditionSpec(_Model):
    """A template checked when the run starts, before any step: false ends the run `skipped`."""

    check: str | bool = Field(description="a template, e.g. \"{{ params.env == 'prod' }}\"")
    message: str | None = Field(None, description="the reason the skipped run shows (a template); "
                                                  "default: the check as written")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"check": value} if isinstance(value, str | bool) else value


class SuccessSpec(_Model):
    """When a run counts as succeeded; default `all`: no step failed (continue_on_failure aside)."""

    any_of: list[str] | None = Field(None, min_length=1, description="succeeded when one of these steps succeeded")
    min_succeeded: int | None = Field(None, ge=1, le=MAX_STEPS,
                                      description="succeeded when at least this many main steps succeeded")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value == "all":
            return {}
        if isinstance(value, str):
            raise ValueError(f"'{value}' is not a success policy; write all, {{any_of: [step, ...]}} or "
                             "{min_succeeded: N}")
        return value

    @model_validator(mode="after")
    def _one(self) -> SuccessSpec:
        if self.any_of is not None and self.min_succeeded is not None:
            raise _error_at("min_succeeded", "give one of any_of, min_succeeded; remove one")
        return self

    @property
    def all(self) -> bool:
        return self.any_of is None and self.min_succeeded is None


class DefaultsSpec(_Model):
    retry: RetrySpec | None = None
    timeout: Duration | None = None
    circuit_breaker: CircuitBreakerSpec | None = Field(None, description="for every http step without its own")


class WorkflowSpec(_Model):
    name: str | None = Field(None, pattern=NAME_PATTERN, description="default: the file name")
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)
    secrets: list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = Field(default_factory=list)
    max_parallel: int = Field(16, ge=1, le=MAX_PARALLEL)
    locks: Locks = Field(default_factory=list, description="shared locks the whole run holds (waits for) "
                                                            "from its first step to its end")
    timeout: Duration | None = Field(
        None, description=f"the whole run, counted from its start (default {duration_text(DEFAULT_RUN_TIMEOUT)}, "
                          f"at most {duration_text(MAX_RUN_TIMEOUT)})"
    )
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    steps: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS)
    resume: bool = Field(
        True, description="after a crash or a stop, resume unfinished runs (false: mark them failed)"
    )
    enabled: bool = Field(True, description="false: nothing starts a run (triggers, people, the API, parent "
                                            "workflows, retries); runs in flight go on")
    preconditions: list[PreconditionSpec] = Field(
        default_factory=list, description="templates checked before any step; one false: the run ends `skipped`")
    success: SuccessSpec = Field(default_factory=SuccessSpec,
                                 description="when the run succeeds: all (default), {any_of: [steps]}, "
                                             "{min_succeeded: N}")
    on_failure: list[StepSpec] = Field(default_factory=list, max_length=MAX_STEPS,
                                       description="steps run when the run failed")
    on_success: list[StepSpec] = Field(default_factory=list, max_length=MAX_STEPS,
                                       description="steps run when the run succeeded")
    finally_: list[StepSpec] = Field(default_factory=list, alias="finally", max_length=MAX_STEPS,
                                     description="steps run at the end whatever happened")
    outputs: dict[str, Any] | None = Field(
        None, description="templates for the run's outputs; default: the outputs of the last steps"
    )
    triggers: TriggersSpec = Field(default_factory=TriggersSpec,
                                   description="what starts runs besides a person: schedules, webhooks, events, files, other workflows")
    concurrency: ConcurrencySpec | None = Field(None, description="how many runs may go at once, and what happens to more")
    notify: list[NotifySpec] = Field(default_factory=list, description="POST a JSON event when a run ends")
    executor: Literal["local", "cluster"] = Field(
        "cluster", description="where run, python and http steps execute when Treadle has a cluster "
                               "(`serve --executor dask://...`): `local` keeps them all on the server")

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("timeout")
    @classmethod
    def _run_timeout(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_RUN_TIMEOUT:
            raise ValueError(
                f"{duration_text(value)} is more than the limit of {duration_text(MAX_RUN_TIMEOUT)} for a run; "
                "split the work into several runs (a `schedule` or `after` trigger can start the next one)"
            )
        return value

    @model_validator(mode="after")
    def _inherit_circuit_breaker(self) -> WorkflowSpec:
        # the engine hands a kind only its own fields, so an http step carries the
        # default itself; `circuit_breaker: null` written on a step turns it off
        breaker = self.defaults.circuit_breaker
        if breaker is not None:
            self.steps[:] = [
                s.model_copy(update={"circuit_breaker": breaker})
                if s.http is not None and "circuit_breaker" not in s.model_fields_set else s
                for s in self.steps
            ]
        return self


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a mapping of this model may have, as written in files."""
    return [f.alias or name for name, f in model.model_fields.items()]


def json_schema() -> dict[str, Any]:
    """JSON Schema of a definition file, for editors (yaml-language-server) and CI."""
    schema = WorkflowSpec.model_json_schema(by_alias=True, mode="validation")
    defs = schema["$defs"]
    # the shorthands the validators accept, which pydantic cannot see
    duration = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "null"},
                          {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$|^\s*\d+(\.\d+)?\s*$"}],
                "description": "seconds, or 45s, 10m, 1h30m, 500ms"}
    one_or_many = {"type": "string"}
    for name, props in [("", schema["properties"]), *((n, d["properties"]) for n, d in defs.items())]:
        for key in ("timeout", "delay", "max_delay", "wait", "reset_after", "settle", "placement_timeout"):
            if key in props:
                props[key] = {**duration, **({"default": props[key]["default"]} if "default" in props[key] else {})}
        ending = {"enum": ["succeeded", "failed", "cancelled"]}
        for key, item in (("needs", one_or_many), ("tags", one_or_many), ("on", {"type": "integer"}),
                          ("expect_status", {"type": "integer"}), ("status", ending)):
            if key == "on" and name == "NotifySpec":
                item = ending
            if key in props and (key != "status" or name == "AfterSpec"):
                props[key] = {"anyOf": [item, {"type": "array", "items": item}, {"type": "null"}]}
        if "retry" in props:
            props["retry"] = {"anyOf": [{"$ref": "#/$defs/RetrySpec"}, {"type": "integer", "minimum": 0}, {"type": "null"}]}
    event = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/EventSpec"}]}
    for key, item in (("schedule", {"$ref": "#/$defs/ScheduleSpec"}), ("event", event),
                      ("file", {"$ref": "#/$defs/FileTriggerSpec"}), ("after", {"$ref": "#/$defs/AfterSpec"})):
        defs["TriggersSpec"]["properties"][key] = {"anyOf": [item, {"type": "array", "items": item}]}
    schema["properties"]["concurrency"] = {"anyOf": [{"$ref": "#/$defs/ConcurrencySpec"},
                                                     {"type": "integer", "minimum": 1}, {"type": "null"}]}
    schema["properties"]["params"]["additionalProperties"] = {
        "anyOf": [{"$ref": "#/$defs/ParamSpec"}, {"enum": list(PARAM_TYPES)}]
    }
    schema["properties"]["success"] = {"anyOf": [{"const": "all"}, {"$ref": "#/$defs/SuccessSpec"}],
                                       "description": schema["properties"]["success"].get("description", "")}
    schema["properties"]["preconditions"]["items"] = {
        "anyOf": [{"type": "string"}, {"type": "boolean"}, {"$ref": "#/$defs/PreconditionSpec"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Treadle workflow definition"
    return schema
