"""Every limit Treadle enforces, in one place, with the reason for each value.

A workflow file, the data its steps make and the runs it starts are bounded, so one
file, one step or one remote server cannot take the process's memory, disk or time
(issue "Security by default", item 5). Each limit fails with a message that says
what was too big, the limit and how to fix it; none silently drops data a later
step reads (see MAX_OUTPUT_BYTES). docs/definitions.md#limits lists them for users.

Definition files (checked when a file loads; reported as path:line:column):

MAX_FILE_BYTES = 1,000,000 bytes of UTF-8
    A workflow is configuration, not data: the largest real files are a few
    hundred steps (tens of kilobytes); a 10,000-step generated file is ~600 KB.
    Loading is linear in the size, ~1 s per MB, so this bounds the time a save
    (or a file pushed through git) can take from the watcher.
MAX_STEPS = 10,000 steps in `steps`, and in each of `on_failure`, `on_success`, `finally`
    The scheduler and the DAG checks are linear, but every step is a row per run, a
    node on the run page and a line in the graph; 10,000 is what bench/reload.py
    loads in < 1 s and bench/engine.py runs at full speed. Bigger jobs are several
    workflows (a `workflow` step per part).
MAX_YAML_VALUES = 100,000 values (aliases included), MAX_YAML_DEPTH = 200 levels
    Enforced by runner/yaml_source.py (kept there as MAX_VALUES/MAX_DEPTH, the same
    numbers; tests/test_limits.py checks they agree): they stop alias "bombs" and
    stack exhaustion. 100,000 leaves room for MAX_STEPS steps of a few keys each.

Runs (checked while a run goes; a step or the run fails with the message):

MAX_FOREACH_ITEMS = 10,000 items per foreach step
    Each item is a task, a row per attempt and a log; the same bound as MAX_STEPS
    for the same reasons. A literal list longer than that is reported at load; a
    rendered one fails the step before any item starts.
MAX_INPUT_BYTES = MAX_OUTPUT_BYTES = 4 MiB of JSON per step attempt
    A step's rendered input and its output are stored with every attempt, kept in
    memory for the templates of later steps, and sent to the dashboard. 4 MiB is
    above what the built-in kinds make on their own: an `http` output holds the body
    twice (parsed `json` and `text`, up to 1,000,000 characters), a `run` output at
    most MAX_STDOUT_BYTES of stdout. Over the limit the step FAILS (not retried)
    rather than keeping a truncated value: outputs are structured data that later
    steps read, and a silently cut list or mapping would give them wrong answers.
    Values JSON cannot hold (a list that contains itself, a number of more than
    4,300 digits, a mapping key that is not text) fail the same way, so they never
    reach the database.
MAX_GATHERED_OUTPUT_BYTES = 64 MiB of JSON
    Values gathered from many steps: a foreach step's list of its items' outputs
    (10,000 items of ~6 KB), and the run's `outputs` (by default the outputs of the
    last steps, which may be such a list). One row in the database and one API
    answer; over it, the step (or the run) fails.
MAX_HTTP_RESPONSE_BYTES = 4 MiB per `http` step response
    Bodies are read as they arrive and the read stops past this size, so a remote
    server cannot fill Treadle's memory (gzip bodies are counted unpacked). A bigger
    JSON body could not fit in the output anyway (see MAX_OUTPUT_BYTES), and only
    MAX_HTTP_TEXT_CHARS of a text body are kept; the step fails rather than keep
    part of it. Big downloads belong in a `run` step (curl -o file).
MAX_HTTP_TEXT_CHARS = 1,000,000 characters of an http body kept as `output.text`
MAX_STDOUT_BYTES = 1,000,000 bytes of a `run` step's stdout (and of stderr) kept
    for its output and for `steps.<id>.stdout` / `.stderr`; the rest is in the log.
MAX_LOG_BYTES = 1,000,000 bytes of log per step (per foreach item), LOG_TAIL_BYTES = 64,000
    Past the limit the middle of the log is dropped: the first MAX_LOG_BYTES and the
    last LOG_TAIL_BYTES are kept with a marker saying how much was left out (the end
    of a log is where the error usually is). Logs are for people; nothing reads them
    as data, so truncating is right here, unlike outputs.
DEFAULT_RUN_TIMEOUT = 7 days, MAX_RUN_TIMEOUT = 30 days
    A run with no `timeout` may last 7 days; `timeout` may be set up to 30 days
    (more is reported at load). Counted from when the run started, across restarts.
    A forgotten `wait`, a hung command or an approval nobody answers must not hold
    a run (its memory, its concurrency slot, its lease) forever; a week covers
    long batch jobs and approvals over a weekend; a month is close to GitHub Actions'
    35-day bound on a workflow run. Longer processes are several runs (schedules,
    `after` triggers).
WIND_UP_TIMEOUT = 7 days
    Compensation and the handlers (`on_failure`, `on_success`, `finally`) run after
    the main steps, even after a timeout, so they are outside `timeout`; together
    they get at most this long, then what still runs is cancelled (the run's result
    stays what the main steps made it). So no run lasts longer than 37 days.
MAX_PARALLEL = 1,024 (`max_parallel`), MAX_RETRIES = 1,000 (`retry.limit`), MAX_REPEAT = 10,000 (`repeat.limit`),
MAX_LOCK_LIMIT = 1,000 (`locks[].limit`)
    Ranges of those fields, checked at load.
MAX_WAIT_SECONDS = 5 minutes a request may wait for a run to end (`wait=`)
    `POST /api/workflows/{name}/runs?wait=` and `GET /api/runs/{id}?wait=` hold an
    HTTP request (a connection, and a slot of the proxy in front) while they wait.
    Proxies and load balancers commonly cut idle requests after 60 s to 10 minutes;
    5 minutes stays under most of them. Longer runs: wait again on the `Location`
    (each call up to 5 minutes), or follow `/events`. Over it: 400 WAIT_TOO_LONG.
MAX_BACKFILL_SLOTS = 1,000 slots per backfill, MAX_BACKFILL_PARALLEL = 100 runs of one at once
    A backfill is checked before anything starts: a range of `* * * * *` over a year
    is half a million runs, a mistake nobody means (a month of a daily schedule is 31,
    of an hourly one 744). Over it: 400 BACKFILL_TOO_LARGE with the count; split the
    range. The parallelism is bounded like `max_parallel`, and the workflow's
    `concurrency` still applies on top.
MAX_PROBLEMS = 1,000 problems reported per file
    The first 1,000 in file order, then one line saying how many more there are. A
    generated file with an error in every step would otherwise print (and send to
    the dashboard) tens of thousands of lines, none more useful than the first.

Limits owned by other modules, mirrored here so this is the one list (the owners
should import them from here; tests/test_limits.py checks the numbers agree):

MAX_TEMPLATE_SIZE = 1,000,000 items a template's `*` may build, MAX_TEMPLATE_EXPONENT
    = 1,000 for `**`, MAX_TEMPLATE_RANGE = 100,000 (Jinja's sandbox `range`):
    runner/templates.py. The size is checked at the mechanism: every operator and
    every method call or filter is estimated before it builds (numbers used as
    widths or lengths included) and its result checked after.
MAX_TEMPLATE_SECONDS = 1 s per render: runner/templates.py (every operator, call,
    filter and `for` loop of the sandbox looks at the clock), so work no size check
    sees (loops over big lists, `wordwrap` of a megabyte again and again) is bounded
    too: a render ends within the deadline plus one operation on values of bounded size.
MAX_CHILD_DEPTH = 10 nested `workflow` steps: runner/executor.py.
MAX_REQUEST_BODY_BYTES = 1 MiB per API or webhook request body: web/ (params and
    webhook payloads are recorded with the run; 1 MiB is far above any real params
    and above common webhook payloads). Over it: 413.
MAX_JSON_DEPTH = 64 levels of arrays and objects in a JSON request body (API and
    webhooks): web/json_body.py, counted on the bytes before decoding. Deeper bodies
    would exhaust the stack of the decoder or of the code that walks the value (a
    RecursionError, a 500); real params and webhook payloads nest a few levels.
    Over it: 400 MALFORMED_BODY naming the depth and the limit.
"""

from __future__ import annotations

from typing import Any

MiB = 1024 * 1024

# definition files
MAX_FILE_BYTES = 1_000_000
MAX_STEPS = 10_000
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 200
MAX_PARALLEL = 1024
MAX_LOCK_LIMIT = 1000
MAX_RETRIES = 1000
MAX_REPEAT = 10_000
MAX_PROBLEMS = 1000
MAX_WAIT_SECONDS = 300.0
MAX_BACKFILL_SLOTS = 1000
MAX_BACKFILL_PARALLEL = 100

# runs
MAX_FOREACH_ITEMS = 10_000
MAX_OUTPUT_BYTES = 4 * MiB
MAX_INPUT_BYTES = MAX_OUTPUT_BYTES
MAX_GATHERED_OUTPUT_BYTES = 64 * MiB
MAX_HTTP_RESPONSE_BYTES = 4 * MiB
MAX_HTTP_TEXT_CHARS = 1_000_000
MAX_STDOUT_BYTES = 1_000_000
MAX_LOG_BYTES = 1_000_000
LOG_TAIL_BYTES = 64_000
DEFAULT_RUN_TIMEOUT = 7 * 86400.0
MAX_RUN_TIMEOUT = 30 * 86400.0
WIND_UP_TIMEOUT = DEFAULT_RUN_TIMEOUT

# mirrored from their owners (see the module docstring)
MAX_TEMPLATE_SIZE = 1_000_000
MAX_TEMPLATE_EXPONENT = 1_000
MAX_TEMPLATE_RANGE = 100_000
MAX_TEMPLATE_SECONDS = 1.0
MAX_CHILD_DEPTH = 10
MAX_REQUEST_BODY_BYTES = 1 * MiB
MAX_JSON_DEPTH = 64


# -- how the messages say sizes and times -------------------------------------------

def size_text(n: int) -> str:
    """`4 MiB (4,194,304 bytes)`, or `1,000,000 bytes`."""
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB ({n:,} bytes)"
    return f"{n:,} bytes"


def duration_text(seconds: float) -> str:
    """`7d`, `12h`, `30m` for round amounts, else `1d2h3m4s`."""
    if not seconds < 1e15:  # also inf and nan
        return "forever" if seconds == float("inf") else f"{seconds:g}s"
    rest, out = int(round(seconds)), ""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or f"{seconds:g}s"


# -- the size of a value as JSON -----------------------------------------------------

class NotJson(ValueError):
    """A value JSON cannot hold (what the database would refuse)."""


class _Over(Exception):
    pass


try:
    from json.encoder import c_encode_basestring_ascii as _quoted  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    from json.encoder import py_encode_basestring_ascii as _quoted

if _quoted is None:  # pragma: no cover
    from json.encoder import py_encode_basestring_ascii as _quoted


def _int_len(value: int) -> int:
    try:
        return len(int.__repr__(value))
    except ValueError:  # more digits than Python converts to text (4,300 by default)
        raise NotJson("it has a number with more than 4,300 digits, which JSON cannot hold") from None


def _float_len(value: float) -> int:
    if value != value:
        return 3  # NaN
    if value in (float("inf"), float("-inf")):
        return 8 if value > 0 else 9  # Infinity, -Infinity
    return len(float.__repr__(value))


def _key_len(key: Any) -> int:
    if isinstance(key, str):
        return len(_quoted(key))
    if key is None or isinstance(key, bool):
        return 7 if key is False else 6  # "null", "true", "false", in quotes
    if isinstance(key, int):
        return _int_len(key) + 2
    if isinstance(key, float):
        return _float_len(key) + 2
    raise NotJson(f"it has a mapping key that is not text ({type(key).__name__})")


def json_size(value: Any, limit: int) -> int:
    """`len(json.dumps(value, default=str))`, without building the text.

    Exact while it is at most `limit`; past the limit the walk stops at once and
    `limit + 1` is returned, so a value built from shared references (a template's
    `[x] * 1000`) is never expanded. Raises NotJson for what json.dumps refuses: a
    container that contains itself, a key that is not text, a huge integer.
    A small mapping costs about as much as json.dumps; scalars need no walk.
    """
    kind = type(value)
    if kind is str:
        if len(value) * 6 + 2 <= limit:  # at most 6 characters per character (\uXXXX)
            return len(_quoted(value))
    elif value is None or value is True:
        return 4
    elif kind is int:
        return _int_len(value)
    total = 0
    stack = [value]
    seen: set[int] = set()  # containers met so far: one met twice is shared or contains itself
    pop, push = stack.pop, stack.append
    while stack:
        v = pop()
        t = type(v)
        if t is str:
            total += len(_quoted(v))
        elif t is dict or t is list:
            if id(v) in seen:
                return _walk(value, limit)  # the slower walk that tells the two apart
            seen.add(id(v))
            total += 2 * len(v) if v else 2  # brackets and ", " between items
            for k, x in (v.items() if t is dict else enumerate(v)):
                if t is dict:
                    total += (len(_quoted(k)) if type(k) is str else _key_len(k)) + 2  # ": "
                tx = type(x)
                if tx is str:
                    total += len(_quoted(x))
                    if total > limit:  # many references to one long text
                        return limit + 1
                elif x is None or x is True:
                    total += 4
                elif tx is int:
                    total += _int_len(x)
                else:
                    push(x)
        else:
            total += _scalar_len(v) if not isinstance(v, dict | list | tuple) else _walk(v, limit - total)
        if total > limit:
            return limit + 1
    return total


def _scalar_len(v: Any) -> int:
    if v is None or v is True:
        return 4
    if v is False:
        return 5
    if isinstance(v, str):
        return len(_quoted(str.__str__(v)))
    if isinstance(v, int):
        return _int_len(int(v))
    if isinstance(v, float):
        return _float_len(float(v))
    return len(_quoted(str(v)))  # what `default=str` makes of it


def _walk(value: Any, limit: int) -> int:
    """json_size by recursion, keeping the path: finds containers that contain themselves."""
    total = 0
    active: set[int] = set()

    def walk(v: Any) -> None:
        nonlocal total
        if isinstance(v, dict | list | tuple):
            ident = id(v)
            if ident in active:
                raise NotJson("it contains itself (a list or mapping that is its own item)")
            active.add(ident)
            total += 2 * len(v) if v else 2
            if isinstance(v, dict):
                for key, item in v.items():
                    total += _key_len(key) + 2
                    walk(item)
            else:
                for item in v:
                    walk(item)
            active.discard(ident)
        else:
            total += _scalar_len(v)
        if total > limit:
            raise _Over

    try:
        walk(value)
    except _Over:
        return limit + 1
    except RecursionError:
        raise NotJson("it is nested too deeply") from None
    return total


def check_json(value: Any, limit: int, what: str, fix: str) -> tuple[int, str | None]:
    """(size, None) when `value` fits in `limit` bytes of JSON, else (size, message).

    The message reads `output: more than the limit of 4 MiB (4,194,304 bytes) as JSON; <fix>`.
    """
    try:
        size = json_size(value, limit)
    except NotJson as exc:
        return limit + 1, f"{what}: cannot be stored: {exc}"
    if size > limit:
        return size, too_big(what, limit, fix)
    return size, None


def too_big(what: str, limit: int, fix: str) -> str:
    return f"{what}: more than the limit of {size_text(limit)} as JSON; {fix}"


OUTPUT_FIX = "return less (write big data to a file and pass its path, or keep only the fields later steps need)"
INPUT_FIX = "pass less data to the step (only the fields it needs, or a file path)"
