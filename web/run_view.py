"""What the run page shows, read from the database: the only truth the pages use.

The run page is built from light queries (no inputs or outputs, which can be large)
aggregated per step, so a finished 5,000-step run renders well under a second; a
step's inputs, outputs and attempts are read only when that step is opened.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runner.dsl.loader import Definition
from runner.engine.report import run_definition
from runner.storage.models import RunStatus

from .dag_view import STATES
from .services import Services

STEPS_PER_PAGE = 50
LOG_TAIL_CHARS = 256_000
VALUE_CHARS = 64_000
FINISHED = {s.value for s in RunStatus if s.finished}


@dataclass
class StepSummary:
    id: str
    kind: str | None = None
    status: str = "pending"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    spans: list[tuple[float, float | None, str, int]] = field(default_factory=list)  # start, end, status, attempt
    items: Counter | None = None  # foreach: state -> how many items
    reused: bool = False

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def item_total(self) -> int:
        return sum(self.items.values()) if self.items else 0


@dataclass
class RunView:
    run: dict[str, Any]
    definition: Definition | None
    steps: list[StepSummary]
    counts: Counter
    failures: list[dict[str, Any]]  # the failed steps with their error: the root causes
    t0: float
    t1: float
    approvals: list[dict[str, Any]] = field(default_factory=list)  # approval steps waiting for a decision

    @property
    def finished(self) -> bool:
        return self.run["status"] in FINISHED

    @property
    def root_causes(self) -> list[dict[str, Any]]:
        """The failed steps, when they made the run fail (a succeeded run's failures were
        allowed or handled: they are no root cause of anything)."""
        return self.failures if self.run["status"] in ("failed", "running", "waiting") else []

    def page(self, page: int, state: str | None) -> tuple[list[StepSummary], int, int]:
        """One page of the step list (filtered by state); returns (rows, page, pages)."""
        rows = [s for s in self.steps if s.status == state] if state else self.steps
        pages = max(1, -(-len(rows) // STEPS_PER_PAGE))
        page = min(max(1, page), pages)
        return rows[(page - 1) * STEPS_PER_PAGE: page * STEPS_PER_PAGE], page, pages

    def page_of(self, step_id: str, state: str | None = None) -> int:
        rows = [s for s in self.steps if s.status == state] if state else self.steps
        for i, s in enumerate(rows):
            if s.id == step_id:
                return i // STEPS_PER_PAGE + 1
        return 1

    def bar(self, start: float, end: float | None) -> tuple[float, float]:
        """Left and width of a timeline bar, in percent of the run's span."""
        span = max(self.t1 - self.t0, 1e-6)
        stop = end if end is not None else self.t1
        left = min(max((start - self.t0) / span * 100, 0.0), 100.0)
        width = min(max((stop - start) / span * 100, 0.4), 100.0 - left)
        return round(left, 2), round(max(width, 0.4), 2)


_KINDS: OrderedDict[str, dict[str, str]] = OrderedDict()


def kinds_of(definition: Definition) -> dict[str, str]:
    """Step id -> kind, computed once per definition version."""
    found = _KINDS.get(definition.version)
    if found is None:
        found = {s.id: s.kind for s in definition.spec.steps} if definition.spec is not None else {}
        _KINDS[definition.version] = found
        if len(_KINDS) > 64:
            _KINDS.popitem(last=False)
    return found


async def definition_of(services: Services, run: dict[str, Any]) -> Definition | None:
    """The definition the run started with; the catalog's when it is that version (no parse)."""
    current = services.catalog.get(run["workflow"])
    if current is not None and current.version == run["version"] and current.valid:
        return current
    return await run_definition(services.store, run)


async def load_run_view(services: Services, run_id: str) -> RunView | None:
    store = services.store
    run = await store.get_run(run_id)
    if run is None:
        return None
    definition = await definition_of(services, run)
    rows, failed = await store.run_pages.attempt_rows(run_id)

    order: list[str] = list(definition.dag.order) if definition is not None and definition.dag else []
    kinds = kinds_of(definition) if definition is not None else {}
    summaries = {sid: StepSummary(sid, kind=kinds.get(sid)) for sid in order}
    latest_whole: dict[str, tuple[int, str]] = {}
    latest_item: dict[tuple[str, int], tuple[int, str]] = {}
    for sid, item, attempt, status, started, finished in rows:
        s = summaries.get(sid)
        if s is None:
            s = summaries[sid] = StepSummary(sid)
        if item >= 0:
            if (sid, item) not in latest_item or attempt >= latest_item[(sid, item)][0]:
                latest_item[(sid, item)] = (attempt, status)
            continue
        if sid not in latest_whole or attempt >= latest_whole[sid][0]:
            latest_whole[sid] = (attempt, status)
            s.finished_at = finished
        if attempt > 0:
            s.attempts = max(s.attempts, attempt)
            if started is not None:
                s.started_at = started if s.started_at is None else min(s.started_at, started)
                s.spans.append((started, finished, status, attempt))
    for sid, (attempt, status) in latest_whole.items():
        summaries[sid].status = status
        summaries[sid].reused = attempt == 0 and status == "succeeded"
    for (sid, _), (_, status) in latest_item.items():
        s = summaries[sid]
        if s.items is None:
            s.items = Counter()
        s.items[status] += 1
    steps = list(summaries.values())
    for s in steps:
        s.spans.sort()
    counts = Counter(s.status for s in steps)
    starts = [s.started_at for s in steps if s.started_at is not None]
    t0 = run["started_at"] or min(starts, default=run["created_at"])
    ends = [e for s in steps for _, e, _, _ in s.spans if e is not None]
    t1 = run["finished_at"] if run["status"] in FINISHED and run["finished_at"] else max([time.time(), *ends])
    # in the order they failed (the first is the likeliest cause), each with its last error
    last_error: dict[str, dict[str, Any]] = {}
    for sid, error, attempt in failed:
        if summaries.get(sid) is not None and summaries[sid].status == "failed":
            last_error[sid] = {"step": sid, "error": error, "attempt": attempt}
    failures = list(last_error.values())
    approvals: list[dict[str, Any]] = []
    if run["status"] not in FINISHED:
        approvals, _ = await services.engine.approvals.pending(run_id=run_id, limit=STEPS_PER_PAGE)
        for row in approvals:  # the step is running, and what it does is wait for a person
            s = summaries.get(row["step_id"])
            if s is not None and row["item"] < 0 and s.status == "running":
                s.status = "waiting"
        counts = Counter(s.status for s in steps)
    return RunView(run, definition, steps, counts, failures, t0, max(t1, t0), approvals)


# -- one step --------------------------------------------------------------------


@dataclass
class StepDetail:
    id: str
    run_id: str
    status: str
    kind: str | None
    attempts: list[dict[str, Any]]  # whole-step attempts, oldest first
    last: dict[str, Any] | None
    items: Counter | None
    item_failures: list[dict[str, Any]]
    reused_from: str | None
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    continue_on_failure: bool = False
    children: list[dict[str, Any]] = field(default_factory=list)  # runs a `workflow` step started
    item_list: list[dict[str, Any]] = field(default_factory=list)  # a foreach's items one by one (the first few)


ITEMS_SHOWN = 200  # items listed one by one; the counts above the list cover them all


async def load_step_detail(services: Services, run: dict[str, Any], step_id: str) -> StepDetail | None:
    definition = await definition_of(services, run)
    known = definition is not None and definition.dag is not None and step_id in definition.dag.deps
    whole, item_rows = await services.store.run_pages.step_rows(run["id"], step_id)
    if not whole and not item_rows and not known:
        return None
    last = whole[-1] if whole else None
    item_last: dict[int, Any] = {}
    for r in item_rows:
        item_last[r["item"]] = r  # rows come ordered by attempt
    items = Counter(r["status"] for r in item_last.values()) if item_last else None
    item_failures = [r for _, r in sorted(item_last.items()) if r["status"] == "failed"][:10]
    reused_from = None
    if last is not None and last["attempt"] == 0 and isinstance(last["input"], dict):
        reused_from = last["input"].get("reused_from")
    kind, cof, needs, dependents = None, False, (), ()
    if known:
        assert definition is not None and definition.dag is not None and definition.spec is not None
        spec = next(s for s in definition.spec.steps if s.id == step_id)
        kind, cof = spec.kind, spec.continue_on_failure
        needs, dependents = definition.dag.deps[step_id], definition.dag.dependents[step_id]
    children = []
    if kind == "workflow":  # the child runs it started (one per foreach item), newest first
        rows, _ = await services.store.list_runs(parent=run["id"], limit=500)
        children = [r for r in rows  # a foreach item's child names its item: `step[2]`
                    if r["parent_step_id"] == step_id or (r["parent_step_id"] or "").startswith(f"{step_id}[")]
    return StepDetail(
        id=step_id, run_id=run["id"], status=last["status"] if last else "pending", kind=kind, children=children,
        item_list=[row for _, row in sorted(item_last.items())[:ITEMS_SHOWN]],
        attempts=[r for r in whole if r["attempt"] > 0], last=last, items=items,
        item_failures=item_failures, reused_from=reused_from, needs=needs, dependents=dependents,
        continue_on_failure=cof,
    )


async def log_chunks(services: Services, run_id: str, step_id: str, after: int = 0) -> tuple[list[dict], bool]:
    """Log chunks after id `after`; on a first read (after=0) only the last LOG_TAIL_CHARS.

    Returns (chunks, cut) where `cut` says the head of the log was left out.
    """
    return await services.store.run_pages.log_tail(run_id, step_id, after, LOG_TAIL_CHARS)


def show_value(value: Any) -> tuple[str, bool]:
    """A stored input or output as text for a `<pre>`: strings as they are, the rest as JSON.

    Returns (text, cut) where `cut` says it was shortened to VALUE_CHARS.
    """
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > VALUE_CHARS:
        return text[:VALUE_CHARS], True
    return text, False


def script_of(value: Any) -> tuple[str | None, Any]:
    """A `run:` step's shell script apart from the rest of its input, so the page shows
    it as the script it is (real newlines) instead of one JSON-escaped line.

    Returns (script or None, the input without it, None when nothing else is left)."""
    if isinstance(value, dict) and isinstance(value.get("run"), str):
        rest = {k: v for k, v in value.items() if k != "run"}
        return value["run"], rest or None
    return None, value


def state_filter(value: str | None) -> str | None:
    return value if value in STATES else None
