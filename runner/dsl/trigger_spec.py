"""The parts of the file format that start runs and report on them: `triggers`,
`concurrency` and `notify` (pydantic models, like definition.py, which uses them).

`triggers` and not `on:`: YAML 1.1 readers (and so many editors and linters) read a
bare `on` key as the boolean true.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .durations import parse_duration

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RUN_ENDINGS = ("succeeded", "failed", "cancelled")
Duration = Annotated[float, BeforeValidator(parse_duration)]
Ending = Literal["succeeded", "failed", "cancelled"]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


_PARAMS_DOC = "templates giving the run's params; default: see docs/triggers.md"


class ScheduleSpec(_Model):
    cron: str = Field(description="five-field cron expression (or @hourly, @daily, ...)")
    timezone: str = Field("UTC", description="IANA zone the cron is read in, e.g. Europe/Berlin")
    catchup: Literal["none", "latest", "all"] = Field(
        "latest", description="times missed while Treadle was down: none, the latest one, or all of them")
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"'{value}' is not a cron expression; write five fields "
                             "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'")
        if len(value.split()) > 5:
            raise ValueError(f"'{value}' has {len(value.split())} fields; Treadle takes five "
                             "(minute hour day-of-month month day-of-week), no seconds")
        try:  # `0 0 31 2 *` is well formed but never comes
            croniter(value).get_next()
        except CroniterBadDateError:
            raise ValueError(f"'{value}' never matches a date; check the day of month and month") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{value}'; use an IANA name like UTC or Europe/Berlin") from None
        return value

    @property
    def key(self) -> str:
        """Names this schedule in the stored state (its last fired time)."""
        return f"schedule:{self.cron}|{self.timezone}"


class WebhookSpec(_Model):
    secret_env: str | None = Field(None, pattern=ENV_NAME_PATTERN,
                                   description="environment variable holding the HMAC-SHA256 key senders sign with")
    token_env: str | None = Field(None, pattern=ENV_NAME_PATTERN,
                                  description="environment variable holding a bearer token, for senders that cannot sign")
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC + " (`body`, `headers`, `query`)")

    @model_validator(mode="after")
    def _one_check(self) -> WebhookSpec:
        if (self.secret_env is None) == (self.token_env is None):
            raise ValueError("a webhook needs exactly one of 'secret_env' (signed calls) or 'token_env' "
                             "(a bearer token); an unauthenticated webhook would let anyone start runs")
        return self


class EventSpec(_Model):
    type: str = Field(min_length=1, description="event type to listen to; * matches any text, e.g. order.*")
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC + " (`type`, `data`)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class FileTriggerSpec(_Model):
    path: str = Field(min_length=1, description="glob of the files to watch, relative to the definition's folder; ** for any depth")
    settle: Duration = Field(1.0, description="a file must stay unchanged this long before a run starts")
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC + " (`file.path`, `file.name`, `file.size`)")

    @field_validator("path")
    @classmethod
    def _inside_the_folder(cls, value: str) -> str:
        # a definition watches files of its own folder, never the server's (/etc, ../../)
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "\\", "~")) or (len(value) > 1 and value[1] == ":"):
            raise ValueError(f"'{value}' is an absolute path; write a glob relative to the definition's "
                             "folder, e.g. inbox/*.csv (files outside that folder cannot be watched)")
        if ".." in parts:
            raise ValueError(f"'{value}' leaves the definition's folder with '..'; write a glob of files "
                             "inside it, e.g. inbox/*.csv")
        if any(part.count("{") != part.count("}") for part in parts):
            raise ValueError(f"'{value}': the braces do not pair up within one name; write alternatives as "
                             "{a,b} inside one name (e.g. inbox/*.{pdf,csv}), or one file trigger per folder")
        return value


class AfterSpec(_Model):
    workflow: str = Field(min_length=1, description="the workflow whose runs this one follows")
    status: list[Ending] = Field(default_factory=lambda: ["succeeded"], description="which endings start this one")
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC + " (`upstream.id`, `.outputs`, ...)")

    @field_validator("status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TriggersSpec(_Model):
    schedule: list[ScheduleSpec] = Field(default_factory=list)
    webhook: WebhookSpec | None = None
    event: list[EventSpec] = Field(default_factory=list)
    file: list[FileTriggerSpec] = Field(default_factory=list)
    after: list[AfterSpec] = Field(default_factory=list)

    @field_validator("schedule", "event", "file", "after", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)


class ConcurrencySpec(_Model):
    limit: int = Field(1, ge=1, le=10_000, description="runs of this workflow going at once")
    policy: Literal["queue", "skip", "cancel_previous"] = Field(
        "queue", description="when the limit is reached: queue the new run, skip it, or cancel the oldest")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"limit": value} if isinstance(value, int) and not isinstance(value, bool) else value


# what `notify.on` may name: a run's ending (bare, as before, or `run.`), a step's events
NotifyEvent = Literal["succeeded", "failed", "cancelled", "run.succeeded", "run.failed", "run.cancelled",
                      "step.failed", "step.retrying", "step.succeeded", "approval.waiting"]


def event_type(name: str) -> str:
    """`failed` -> `run.failed`; the other names as they are."""
    return f"run.{name}" if name in RUN_ENDINGS else name


class EmailSpec(_Model):
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)]] = Field(
        min_length=1, max_length=50, description="who gets the mail")
    from_: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$", max_length=320, description="the sender address")
    host: str = Field(min_length=1, max_length=255, description="the SMTP server")
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["starttls", "ssl", "none"] = Field("starttls", description="starttls (587), ssl (465), none (a local relay)")
    username_env: str | None = Field(None, pattern=ENV_NAME_PATTERN, description="environment variable with the SMTP user")
    password_env: str | None = Field(None, pattern=ENV_NAME_PATTERN,
                                     description="environment variable with the SMTP password")

    @field_validator("to", mode="before")
    @classmethod
    def _to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class NotifySpec(_Model):
    on: list[NotifyEvent] = Field(default_factory=lambda: list(RUN_ENDINGS),
                                  description="which events are posted: run endings (succeeded, failed, cancelled, "
                                              "or run.<ending>), step.failed, step.retrying, step.succeeded, "
                                              "approval.waiting")
    webhook: str | None = Field(None, description="http(s) URL the event is POSTed to")
    email: EmailSpec | None = Field(None, description="send the event as an e-mail (plain text and HTML) over SMTP")
    format: Literal["json", "slack", "template"] = Field(
        "json", description="json: Treadle's event document; slack: Slack incoming-webhook blocks; "
                            "template: the body rendered from `template`")
    template: str | None = Field(None, max_length=20_000,
                                 description="with format: template, the body (sandboxed; sees `event`)")
    content_type: str = Field("application/json", max_length=200, description="with format: template")
    secret_env: str | None = Field(None, pattern=ENV_NAME_PATTERN,
                                   description="sign the body like incoming webhooks (X-Treadle-Signature)")
    retries: int = Field(3, ge=0, le=20, description="tries after the first when the receiver fails")

    @model_validator(mode="after")
    def _template_with_its_format(self) -> NotifySpec:
        if (self.webhook is None) == (self.email is None):
            raise ValueError("an entry has a `webhook:` or an `email:`, exactly one")
        if self.email is not None and self.format != "json":
            raise ValueError("`format:` is for webhooks; an e-mail has its own plain-text and HTML body")
        if self.format == "template" and not self.template:
            raise ValueError("format: template needs a `template:` (the body, e.g. '{\"text\": \"{{ event.workflow }}\"}')")
        if self.template and self.format != "template":
            raise ValueError(f"`template:` is used only with format: template (this entry has format: {self.format})")
        return self

    def events(self) -> set[str]:
        return {event_type(name) for name in self.on}

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"'{value}' is not an http:// or https:// URL")
        return value

    @field_validator("on", mode="before")
    @classmethod
    def _on_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
