"""The bundled example definitions work out of the box.

Every file in `definitions/` must validate, and every example workflow must run to
success through the real command line (`python -m runner`, a subprocess) with only
Python and /bin/sh, no network. Each run is then read back with `treadle show --json`
to check the state every step ended in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.gitops.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]
DEFINITIONS = REPO / "definitions"


@dataclass
class Case:
    workflow: str
    steps: dict[str, str]  # step id -> the state it must end in
    params: list[str] = field(default_factory=list)
    check: Callable[[dict[str, Any], Any], None] | None = None  # (run document, cli)
    label: str = ""
    files: dict[str, str] = field(default_factory=dict)  # written to the temp folder; params may say {tmp}

    @property
    def id(self) -> str:
        return self.label or self.workflow


class Cli:
    """`python -m runner ...` with its own database, temp folder and a clean environment."""

    def __init__(self, tmp_path: Path):
        self.db = f"sqlite:///{tmp_path / 'treadle.db'}"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.cwd = tmp_path  # not the repo: paths in the examples must not depend on it
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
        self.env.update(TMPDIR=str(self.tmp), PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=120,
            cwd=self.cwd, env={**self.env, **(env or {})},
        )

    def json(self, *args: str) -> Any:
        result = self(*args, "--json", "--db", self.db)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def step(doc: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["id"] == step_id)


# -- what each example must do ---------------------------------------------------


def check_hello(doc: dict[str, Any], cli: Cli) -> None:
    assert doc["outputs"] == {"greeting": "hello, world"}


def check_hello_quoting(doc: dict[str, Any], cli: Cli) -> None:
    # the param reaches the shell through the environment: quotes and $( ) stay text
    assert doc["outputs"] == {"greeting": "hello, O'Brien $(whoami)"}


def check_fan_out(doc: dict[str, Any], cli: Cli) -> None:
    fan = step(doc, "count_rows")
    assert [item["status"] for item in fan["items"]] == ["succeeded"] * 3
    assert [o["region"] for o in fan["output"]] == ["eu-west", "us-east", "ap-south"]
    assert doc["outputs"] == {
        "total": {"regions": ["eu-west", "us-east", "ap-south"], "rows": 6000, "largest": "ap-south"}
    }


def check_quiet_day(doc: dict[str, Any], cli: Cli) -> None:
    assert doc["outputs"]["grand_total"] == 257.75
    assert doc["outputs"]["report"].startswith("4 orders, 257.75 EUR (quiet day)")
    assert step(doc, "totals")["output"]["customers"][0] == {"customer": "ada", "total": 162.75}


def check_big_day(doc: dict[str, Any], cli: Cli) -> None:
    assert doc["params"] == {"threshold": 50, "currency": "USD"}
    assert doc["outputs"]["report"].startswith("4 orders, 257.75 USD (big day)")
    assert step(doc, "big_day")["output"] == "big day: 257.75 USD, thank ada"


def check_retry(doc: dict[str, Any], cli: Cli) -> None:
    flaky = step(doc, "flaky")
    assert flaky["attempts"] == 3
    assert [a["status"] for a in flaky["attempt_list"]] == ["failed", "failed", "succeeded"]
    assert [a["exit_code"] for a in flaky["attempt_list"]] == [75, 75, 0]
    assert flaky["output"] == {"ready_after": 3, "attempt": 3}
    assert step(doc, "announce")["output"] == "ready after 3 attempts"
    assert not list(cli.tmp.glob("treadle-retry-demo-*")), "the counter file is removed on success"


def check_nightly(doc: dict[str, Any], cli: Cli) -> None:
    assert doc["outputs"] == {"summary": {"greeting": "hello, on-call team", "rows": 6000}}
    children = cli.json("runs", "--limit", "50")
    by_workflow = {r["workflow"]: r for r in children if r["parent_run_id"] == doc["id"]}
    assert set(by_workflow) == {"hello", "fan-out"}
    assert by_workflow["hello"]["status"] == "succeeded"
    assert by_workflow["hello"]["params"] == {"name": "on-call team"}
    assert by_workflow["hello"]["parent_step_id"] == "greet_team"


def check_local_http(doc: dict[str, Any], cli: Cli) -> None:
    assert step(doc, "create_order")["http_status"] == 201
    assert doc["outputs"] == {"check": {
        "status": 201, "accepted": True, "amount": 12.5,
        "idempotency_key": f"{doc['id']}-create_order",
    }}
    assert not list(cli.tmp.glob("treadle-stub-*")), "the port file is removed"


def check_error_handling(doc: dict[str, Any], cli: Cli) -> None:
    slow = step(doc, "slow_export")
    assert slow["error"].startswith("timed out after 1.0s")
    assert slow["status"] == "failed" and slow["exit_code"] is None  # stopped by the timeout, not ended by itself
    assert step(doc, "publish")["output"] == "published 3 rows; export was failed"


def check_orders_inbox(doc: dict[str, Any], cli: Cli) -> None:
    assert doc["outputs"] == {"count": {"file": "orders.csv", "orders": 3}}


ALL = "succeeded"
CASES = [
    Case("hello", {"greet": ALL}, check=check_hello),
    Case("orders-inbox", {"count": ALL}, params=["path={tmp}/orders.csv"], check=check_orders_inbox,
         files={"orders.csv": "id,amount\n1,9.5\n2,12\n3,4\n"}),
    Case("hello", {"greet": ALL}, params=["name=O'Brien $(whoami)"], check=check_hello_quoting,
         label="hello-quoting"),
    Case("fan-out", {"list_regions": ALL, "count_rows": ALL, "total": ALL}, check=check_fan_out),
    Case("data-pipeline", {
        "extract": ALL, "totals": ALL, "shape": ALL,
        "big_day": "skipped", "quiet_day": ALL, "report": ALL,
    }, check=check_quiet_day),
    Case("data-pipeline", {
        "extract": ALL, "totals": ALL, "shape": ALL,
        "big_day": ALL, "quiet_day": "skipped", "report": ALL,
    }, params=["threshold=50", "currency=USD"], check=check_big_day, label="data-pipeline-big-day"),
    Case("retry-demo", {"flaky": ALL, "announce": ALL}, check=check_retry),
    Case("nightly", {"greet_team": ALL, "regions": ALL, "summary": ALL}, check=check_nightly),
    Case("local-http", {"stub_api": ALL, "stub_port": ALL, "create_order": ALL, "check": ALL},
         params=["order_id=A-17", "amount=12.5"], check=check_local_http),
    Case("error-handling", {
        "prepare": ALL, "slow_export": "failed", "clean_up": ALL, "publish": ALL,
    }, check=check_error_handling),
]


# -- the tests -------------------------------------------------------------------


def test_the_definitions_folder_is_valid(cli: Cli) -> None:
    result = cli("validate", str(DEFINITIONS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "all valid" in result.stderr

    github = cli("validate", "--format", "github", str(DEFINITIONS))
    assert (github.returncode, github.stdout) == (0, "")


def test_every_example_has_a_case() -> None:
    catalog = Catalog(DEFINITIONS)
    catalog.load_all()
    assert not catalog.problems()
    assert set(catalog.names()) == {c.workflow for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_example_runs(case: Case, cli: Cli) -> None:
    for name, text in case.files.items():
        (cli.tmp / name).write_text(text)
    params = [arg for p in case.params for arg in ("-p", p.replace("{tmp}", str(cli.tmp)))]
    result = cli("run", case.workflow, *params, "--definitions", str(DEFINITIONS), "--db", cli.db, "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = json.loads(result.stdout)["id"]

    doc = cli.json("show", run_id)
    assert doc["id"] == run_id
    assert (doc["status"], doc["error"]) == ("succeeded", None)
    assert {s["id"]: s["status"] for s in doc["steps"]} == case.steps
    if case.check is not None:
        case.check(doc, cli)


def test_environment_variables_set_the_defaults(cli: Cli) -> None:
    env = {"TREADLE_DEFINITIONS": str(DEFINITIONS), "TREADLE_DB": cli.db}
    result = cli("run", "hello", "-p", "name=env", env=env)
    assert result.returncode == 0, result.stderr
    runs = cli("runs", "--json", env=env)
    assert [(r["workflow"], r["outputs"]) for r in json.loads(runs.stdout)] == [
        ("hello", {"greeting": "hello, env"})
    ]
