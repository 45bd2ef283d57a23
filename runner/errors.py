"""Every error Treadle raises on purpose, in one place.

    TreadleError                 base: `error_code`, `cli_exit_code`, `http_status`
    ├── DefinitionError          a definition file has problems (a list of Problem)
    ├── YamlSyntaxError          a file is not YAML (with its line and column)
    ├── TemplateSyntax           a template does not parse (checked at load)
    ├── TemplateFailed           a template failed while rendering (undefined name, sandbox limit)
    ├── WorkflowNotFound         no workflow of that name in the catalog              404
    ├── WorkflowInvalid          the workflow exists but its file has problems        409
    ├── WorkflowDisabled         `enabled: false`: nothing may start a run of it      409
    ├── VersionNotFound          no recorded version of that workflow by that id      404
    ├── BackfillNotFound         no backfill with that id                             404
    ├── ParamError               run parameters do not match the workflow's `params`  400
    ├── SecretMissing            a secret the workflow needs is not set               409
    ├── RunNotFound              no run with that id in the store                     404
    ├── RunConflict              the run's state does not allow the action            409
    ├── StepFailed               one step attempt failed (raised inside step kinds)
    │   └── CircuitOpen          refused by an open circuit breaker
    ├── ShuttingDown             Treadle is stopping: no new run                      503
    ├── DatabaseError            the database cannot be used (URL, connection, schema)  503
    ├── ExecutorError            the cluster executor's scheduler cannot be reached    503
    ├── SecretsFileError         --secrets-file missing, unreadable or malformed
    ├── TokenError               a token cannot be created as asked                   400
    │   └── TokenExists          ... because one of that name exists                  409
    ├── SignatureError           a signature or bearer token does not check out       401
    │   └── WebhookUnauthorized  ... of a call to /hooks/{workflow}
    ├── WebhookNotConfigured     a webhook's key is not set on the server             503
    ├── NoWebhook                the workflow has no webhook trigger                  404
    ├── DuplicateDelivery        a signed webhook call received before (a replay)      409
    ├── MalformedBody            a request body that is not what the route takes      400
    ├── BadRequest               a query value out of range (`wait=`, a backfill range) 400
    ├── WorkflowPaused           a trigger for a paused workflow                      409
    ├── LaunchRejected           a trigger's params do not fit (422) or it cannot start (409)
    └── GitSyncError             cloning or pulling the followed repository failed

The number is the HTTP status the API answers with (`http_status`; 400 when not
set): web/app.py maps every TreadleError through that attribute alone. Messages say
what went wrong and, where possible, how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a definition file, printed compiler-style."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class TreadleError(Exception):
    """Base of Treadle's own errors. `cli_exit_code` is what the CLI exits with,
    `http_status` what the API answers, `error_code` the API's `error_code`."""

    cli_exit_code = 1
    error_code = "TREADLE_ERROR"
    http_status: int | None = 400


class YamlSyntaxError(TreadleError):
    error_code = "YAML_SYNTAX"

    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.line, self.column = line, column


class TemplateSyntax(TreadleError):
    error_code = "TEMPLATE_SYNTAX"

    def __init__(self, message: str, lineno: int):
        super().__init__(message)
        self.message, self.lineno = message, lineno


class TemplateFailed(TreadleError):
    """Rendering failed at run time (undefined name, sandbox violation, error in a filter)."""

    error_code = "TEMPLATE_FAILED"


class DefinitionError(TreadleError):
    """A definition file could not be loaded; `problems` lists every problem found."""

    error_code = "DEFINITION_INVALID"

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class WorkflowNotFound(TreadleError):
    cli_exit_code = 2
    error_code = "WORKFLOW_NOT_FOUND"
    http_status = 404

    def __init__(self, name: str, known: list[str] | None = None):
        import difflib

        self.name = name
        hint = ""
        close = difflib.get_close_matches(name, known or [], n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        super().__init__(f"no workflow named '{name}'{hint}")


class VersionNotFound(TreadleError):
    cli_exit_code = 2
    error_code = "VERSION_NOT_FOUND"
    http_status = 404

    def __init__(self, name: str, version: str):
        super().__init__(f"workflow '{name}' has no recorded version '{version}'; its versions are listed on its "
                         f"page and by GET /api/workflows/{name}/versions")


class BackfillNotFound(TreadleError):
    cli_exit_code = 2
    error_code = "BACKFILL_NOT_FOUND"
    http_status = 404

    def __init__(self, backfill_id: str):
        super().__init__(f"no backfill '{backfill_id}'; GET /api/backfills lists them")


class WorkflowInvalid(TreadleError):
    cli_exit_code = 2
    error_code = "WORKFLOW_INVALID"
    http_status = 409

    def __init__(self, name: str, problems: list[Problem]):
        self.name = name
        self.problems = problems
        if not problems:  # told to a caller who may not read the file (a public webhook)
            super().__init__(f"workflow '{name}' has problems in its file; fix it first (the dashboard and "
                             "`treadle validate` list them)")
            return
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"workflow '{name}' has problems; fix its file first:\n{lines}")


class WorkflowDisabled(TreadleError):
    """`enabled: false` in the workflow's file: nothing may start a run of it."""

    cli_exit_code = 2
    error_code = "WORKFLOW_DISABLED"
    http_status = 409

    def __init__(self, name: str, path: str):
        self.name = name
        super().__init__(f"workflow '{name}' is disabled (`enabled: false` in {path}); no run starts until the "
                         "file says `enabled: true` (or leaves the line out)")


class ParamError(TreadleError):
    """Bad run parameters. `errors` maps a param name to what is wrong with it."""

    cli_exit_code = 2
    error_code = "INVALID_PARAMS"

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"param '{k}': {v}" for k, v in errors.items()))


class RunNotFound(TreadleError):
    cli_exit_code = 2
    error_code = "RUN_NOT_FOUND"
    http_status = 404

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"no run with id '{run_id}'")


class StepFailed(TreadleError):
    """A step attempt failed. `code` is the exit code or HTTP status used by `retry.on`
    (`http_status` here is the status the step's HTTP call got, not an API answer)."""

    error_code = "STEP_FAILED"

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        http_status: int | None = None,
        output: object = None,
        retryable: bool = True,
        host_error: str | None = None,
    ):
        super().__init__(message)
        self.exit_code = exit_code
        self.http_status = http_status
        self.output = output
        self.retryable = retryable
        # an http call's verdict on its host for the circuit breaker: the failure
        # (connection, timeout, 5xx/429) when the host is at fault, else None
        self.host_error = host_error

    @property
    def code(self) -> int | None:
        return self.http_status if self.http_status is not None else self.exit_code


class SecretMissing(TreadleError):
    cli_exit_code = 2
    error_code = "SECRET_MISSING"
    http_status = 409  # the server's setup, not the request: like an invalid file

    def __init__(self, names: list[str]):
        self.names = names
        listed = ", ".join(names)
        super().__init__(
            f"secret{'s' if len(names) > 1 else ''} {listed} not set; "
            f"export {names[0]}=... in the environment Treadle runs in"
        )


class ShuttingDown(TreadleError):
    cli_exit_code = 1
    error_code = "SHUTTING_DOWN"
    http_status = 503

    def __init__(self) -> None:
        super().__init__("Treadle is shutting down and starts no new run; try again once it is back")



class DatabaseError(TreadleError):
    """The database cannot be used: a URL Treadle does not understand, a server that
    refuses the connection, a missing database, a schema newer than this Treadle."""

    cli_exit_code = 2
    error_code = "DATABASE_UNAVAILABLE"
    http_status = 503


class RunConflict(TreadleError):
    """The run is not in a state that allows the action."""

    http_status = 409

    def __init__(self, message: str, code: str = "RUN_CONFLICT"):
        super().__init__(message)
        self.error_code = code


class SecretsFileError(TreadleError):
    """The secrets file is missing, unreadable or malformed (CLI exit code 2)."""

    cli_exit_code = 2
    error_code = "SECRETS_FILE"


class TokenError(TreadleError):
    error_code = "TOKEN_ERROR"
    cli_exit_code = 2


class TokenExists(TokenError):
    """A token of that name exists already: a conflict with the state, not a bad request."""

    error_code, http_status = "TOKEN_EXISTS", 409


class SignatureError(TreadleError):
    """A request's signature or bearer token does not check out."""

    error_code = "SIGNATURE_INVALID"
    http_status = 401


class WebhookUnauthorized(SignatureError):
    """A webhook call whose signature or token does not check out."""

    error_code = "WEBHOOK_UNAUTHORIZED"


class WebhookNotConfigured(TreadleError):
    error_code, http_status = "WEBHOOK_NOT_CONFIGURED", 503


class NoWebhook(TreadleError):
    """`/hooks/{workflow}` of a workflow without `triggers.webhook`."""

    error_code, http_status = "NO_WEBHOOK", 404

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"workflow '{name}' has no webhook; add `triggers: {{webhook: {{secret_env: NAME}}}}` "
                         "(or `token_env`) to its file to start it from /hooks/" + name)


class DuplicateDelivery(TreadleError):
    """A signed webhook call whose signature was accepted before, within its window."""

    error_code, http_status = "DUPLICATE_DELIVERY", 409


class MalformedBody(TreadleError):
    error_code, http_status = "MALFORMED_BODY", 400


class BadRequest(TreadleError):
    """A request asks for something outside what Treadle allows (a `wait` past its cap,
    a backfill of too many slots); `error_code` names which."""

    cli_exit_code = 2
    http_status = 400

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.error_code = code


class WorkflowPaused(TreadleError):
    error_code, http_status = "WORKFLOW_PAUSED", 409


class LaunchRejected(TreadleError):
    """A trigger's params did not work out (422), or the workflow cannot start (409)."""

    def __init__(self, reason: str | None, errors: dict[str, str] | None):
        super().__init__(f"no run started: {reason}")
        self.errors = errors
        self.error_code = "INVALID_PARAMS" if errors else "CANNOT_START"
        self.http_status = 422 if errors else 409


class GitSyncError(TreadleError):
    """Cloning or pulling the followed repository failed."""

    error_code = "GIT_SYNC"


class CircuitOpen(StepFailed):
    """A call refused by an open (or busy half-open) breaker; retryable, with no HTTP status."""

    error_code = "CIRCUIT_OPEN"


class ExecutorError(TreadleError):
    """The executor URL is wrong, or the Dask scheduler cannot be reached."""

    cli_exit_code = 2
    error_code = "EXECUTOR_UNAVAILABLE"
    http_status = 503


class RevisionError(TreadleError):
    """`treadle plan`: the folder is not in a git work tree, or a revision names no commit."""

    cli_exit_code = 2
    error_code = "BAD_REVISION"


class ServerCheckFailed(TreadleError):
    """A command that asks a Treadle server (`validate --server`, `start`, `backfill`,
    `pin`) could not reach it, or the server refused the request (the message says why)."""

    cli_exit_code = 2
    error_code = "SERVER_CHECK_FAILED"
