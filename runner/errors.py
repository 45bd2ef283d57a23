"""Every error Treadle raises on purpose.

    TreadleError                 base; carries the CLI exit code
    ├── DefinitionError          a definition file has problems (a list of Problem)
    ├── WorkflowNotFound         no workflow of that name in the catalog
    ├── WorkflowInvalid          the workflow exists but its file has problems
    ├── ParamError               run parameters do not match the workflow's `params`
    ├── RunNotFound              no run with that id in the store
    └── StepFailed               one step attempt failed (raised inside step kinds)

Messages say what went wrong and, where possible, how to fix it.
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
    """Base of Treadle's own errors. `cli_exit_code` is what the CLI exits with."""

    cli_exit_code = 1
    error_code = "TREADLE_ERROR"


class DefinitionError(TreadleError):
    """A definition file could not be loaded; `problems` lists every problem found."""

    error_code = "DEFINITION_INVALID"

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class WorkflowNotFound(TreadleError):
    cli_exit_code = 2
    error_code = "WORKFLOW_NOT_FOUND"

    def __init__(self, name: str, known: list[str] | None = None):
        import difflib

        self.name = name
        hint = ""
        close = difflib.get_close_matches(name, known or [], n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        super().__init__(f"no workflow named '{name}'{hint}")


class WorkflowInvalid(TreadleError):
    cli_exit_code = 2
    error_code = "WORKFLOW_INVALID"

    def __init__(self, name: str, problems: list[Problem]):
        self.name = name
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"workflow '{name}' has problems; fix its file first:\n{lines}")


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

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"no run with id '{run_id}'")


class StepFailed(TreadleError):
    """A step attempt failed. `code` is the exit code or HTTP status used by `retry.on`."""

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

    def __init__(self) -> None:
        super().__init__("Treadle is shutting down and starts no new run; try again once it is back")



class DatabaseError(TreadleError):
    """The database cannot be used: a URL Treadle does not understand, a server that
    refuses the connection, a missing database, a schema newer than this Treadle."""

    cli_exit_code = 2
    error_code = "DATABASE_UNAVAILABLE"
