"""Workflow handlers (on_failure, on_success, finally) and compensation (SAGA), on real
shell steps; the order things ran in is read from a file the steps append to."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runner.dsl.loader import load_text
from tests.conftest import definition
from tests.exec_support import by_id, eventually, recorded, run_yaml

SAGA = """
    steps:
      - id: pay
        run: "echo pay >> order.txt; echo payment-42"
        compensate: {run: "echo 'refund {{ steps.pay.output }}' >> order.txt"}
      - id: reserve
        run: "echo reserve >> order.txt"
        compensate: {run: "echo unreserve >> order.txt; UNDO"}
      - id: label
        run: "echo label >> order.txt"
      - id: ship
        run: "echo ship >> order.txt; SHIP"
      - id: notify
        log: never
    on_failure:
      - id: alert
        log: "{{ run.status }}: {{ run.failed_step.id }} said {{ run.failed_step.error }}"
      - id: page
        run: "echo page >> order.txt; exit 7"
    on_success:
      - id: celebrate
        run: "echo celebrate >> order.txt"
    finally:
      - id: cleanup
        run: "echo cleanup-{{ run.status }} >> order.txt"
"""


def saga(ship: str = "exit 1", undo: str = "true") -> str:
    return SAGA.replace("SHIP", ship).replace("UNDO", undo)


async def test_a_failure_undoes_what_succeeded_newest_first_then_runs_the_handlers(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, saga())
    order = (tmp_path / "order.txt").read_text().split("\n")
    assert order[:4] == ["pay", "reserve", "label", "ship"]
    # compensations in reverse completion order (label has none), then on_failure, then finally
    assert order[4:] == ["unreserve", "refund payment-42", "page", "cleanup-failed", ""]
    steps = by_id(doc)
    assert doc["status"] == "failed" and doc["compensated"] == "true"
    assert doc["error"].startswith("step 'ship' failed")  # a failing handler (page) hides nothing
    assert steps["reserve.compensate"]["status"] == "succeeded" and steps["pay.compensate"]["status"] == "succeeded"
    assert steps["alert"]["output"].startswith("failed: ship said exit code 1")
    assert steps["page"]["status"] == "failed" and steps["notify"]["status"] == "upstream_failed"
    assert "celebrate" not in steps or steps["celebrate"]["status"] == "pending"


async def test_a_failing_undo_makes_the_compensation_partial_and_the_others_still_run(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, saga(undo="exit 4"))
    assert doc["compensated"] == "partial" and doc["status"] == "failed"
    assert by_id(doc)["reserve.compensate"]["status"] == "failed"
    assert "refund payment-42" in (tmp_path / "order.txt").read_text()


async def test_success_runs_on_success_and_finally_but_no_compensation(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, saga(ship="true"))
    assert doc["status"] == "succeeded" and doc["compensated"] is None
    assert (tmp_path / "order.txt").read_text().split() == [
        "pay", "reserve", "label", "ship", "celebrate", "cleanup-succeeded"]


async def test_a_failing_on_success_handler_does_not_change_a_succeeded_run(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps: [{id: a, log: fine}]
        on_success: [{id: h, run: "exit 3"}]
    """)
    assert doc["status"] == "succeeded" and doc["error"] is None
    assert by_id(doc)["h"]["status"] == "failed"


async def test_cancel_with_compensate_undoes_and_runs_finally(engine, tmp_path):
    d = definition(saga(ship="sleep 30"), tmp_path)
    exe = await engine.start(d)
    await eventually(lambda: (tmp_path / "order.txt").exists() and "ship" in (tmp_path / "order.txt").read_text())
    assert engine.cancel(exe.id, compensate=True)
    assert await asyncio.wait_for(exe.wait(), 15) == "cancelled"
    doc = await recorded(engine, exe.id)
    assert doc["compensated"] == "true"
    assert (tmp_path / "order.txt").read_text().split("\n")[4:] == [
        "unreserve", "refund payment-42", "cleanup-cancelled", ""]


async def test_a_plain_cancel_does_not_compensate(engine, tmp_path):
    d = definition(saga(ship="sleep 30"), tmp_path)
    exe = await engine.start(d)
    await eventually(lambda: (tmp_path / "order.txt").exists() and "ship" in (tmp_path / "order.txt").read_text())
    engine.cancel(exe.id)
    await asyncio.wait_for(exe.wait(), 15)
    doc = await recorded(engine, exe.id)
    assert doc["compensated"] is None and "refund" not in (tmp_path / "order.txt").read_text()


def test_handler_and_compensation_problems_are_reported_with_positions() -> None:
    text = """steps:
  - id: a
    log: x
    compensate: {log: undo, needs: [a]}
on_failure:
  - id: a
    log: "{{ steps.nope.output }}"
finally:
  - id: f
    needs: [ghost]
    log: y
"""
    problems = [str(p) for p in load_text(text, "h.yaml").problems]
    assert problems == [
        "h.yaml:4:29: steps[0].compensate.needs: 'needs' is not allowed in 'compensate' (it runs when the run "
        "fails, in reverse order of the steps that succeeded); remove it",
        "h.yaml:6:9: on_failure[0].id: step id 'a' is already used in steps; ids are unique across the file",
        "h.yaml:7:10: on_failure[0].log: refers to steps.nope, but there is no step 'nope'",
        "h.yaml:10:13: finally[0].needs: no step named 'ghost' (steps: f)",
    ]


def test_handlers_may_read_any_main_step_and_compensations_their_own_step(tmp_path: Path) -> None:
    d = load_text("""steps:
  - id: first
    log: one
    compensate: {log: "undo {{ steps.first.output }} and {{ steps.last.output }}"}
  - id: last
    log: two
finally:
  - id: f
    log: "{{ steps.first.output }} {{ steps.last.output }}"
""", "ok.yaml")
    assert d.valid, d.problems
