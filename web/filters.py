"""Search and filters shared by the API and the pages, so that `/?state=failing` and
`/api/workflows?state=failing` (and the runs list and `/api/runs`) pick the same rows."""

from __future__ import annotations

import time
from typing import Any

from litestar.exceptions import ValidationException

from runner.dsl.durations import parse_instant
from runner.dsl.loader import Definition

# a workflow's state as the list shows it: its file broken, its triggers paused, its
# last run failed, or none of these
WORKFLOW_STATES = ("ok", "failing", "broken", "paused")
RUN_TRIGGERS = ("manual", "api", "dashboard", "cli", "retry", "workflow", "schedule", "webhook", "event", "file", "backfill",
                "after", "replay")  # as docs/api.md lists them (`trigger` of a run)


def workflow_states(definition: Definition, last: dict[str, Any] | None, paused: bool) -> set[str]:
    states = set()
    if not definition.healthy:
        states.add("broken")
    if paused:
        states.add("paused")
    if last is not None and last.get("status") == "failed":
        states.add("failing")
    return states or {"ok"}


def workflow_matches(definition: Definition, *, tag: str | None, q: str | None, state: str | None,
                     last: dict[str, Any] | None, paused: bool) -> bool:
    """`tag` among its tags; `q` in its name, path or description (any case); `state`
    one of WORKFLOW_STATES that applies to it."""
    spec = definition.spec
    if tag and (spec is None or tag not in spec.tags):
        return False
    if state and state not in workflow_states(definition, last, paused):
        return False
    if q:
        hay = " ".join([definition.name, definition.path, (spec.description or "") if spec else ""])
        return q.lower() in hay.lower()
    return True


def run_window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """`since`/`until` as epoch seconds; a 400 that shows the accepted forms otherwise."""
    now = time.time()
    bounds = []
    for name, value in (("since", since), ("until", until)):
        try:
            bounds.append(parse_instant(value, now) if value else None)
        except ValueError as e:
            raise ValidationException(f"'{name}': {e}") from None
    return bounds[0], bounds[1]
