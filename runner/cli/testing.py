"""`treadle test [PATH]`: run the cases of the workflows' test files (`NAME.test.yaml`).

Each case is a run of the real engine, recorded in a temporary SQLite database that
is thrown away afterwards; mocked steps are answered by their mock and never execute
(engine/mocks.py). What a case expects is compared with the run as recorded
(`treadle show --json` reads the same document), and every difference is reported
with the expected and the actual value. Exit code: 0 every case passed, 1 some case
failed, 2 a test file is invalid (its problems printed as path:line:column).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dsl.casefile import CaseFile, CaseSpec, is_test_file, load_case_file, workflow_file_of
from ..dsl.loader import Definition
from ..errors import Problem, TreadleError
from ..gitops.catalog import Catalog, find_test_files, relative_to_root

CASE_TIMEOUT = 60.0  # seconds a case may run by default (--timeout)


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from . import _duration_arg

    p = sub.add_parser("test", help="run the workflows' test files (NAME.test.yaml) with the real engine, "
                                    "mocked steps answered without executing")
    p.add_argument("path", nargs="?", help=f"a folder, a test file or a workflow file (default: {defaults['definitions']})")
    p.add_argument("--junit-xml", metavar="FILE", help="also write the results as JUnit XML (for CI)")
    p.add_argument("-k", metavar="TEXT", dest="keyword", help="run only the cases whose name contains TEXT")
    p.add_argument("--timeout", type=_duration_arg, default=f"{CASE_TIMEOUT:g}s",
                   help=f"how long one case may run before it is cancelled and fails (default {CASE_TIMEOUT:g}s)")
    p.add_argument("--definitions", default=defaults["definitions"],
                   help=f"the definitions folder, for workflows the tested ones start (default {defaults['definitions']})")
    p.set_defaults(func=cmd_test)


# -- finding and loading test files ----------------------------------------------


def collect(path: Path, definitions: Path) -> tuple[Catalog, list[CaseFile], list[str]]:
    """The catalog the tests run against, the test files found under `path` (loaded and
    checked), and the workflows that have no test file."""
    # the definitions folder when PATH is in it (a `workflow:` step may start any of its
    # workflows, and names are unique across it); else the folder tested, or the file's
    root = definitions if definitions.is_dir() and relative_to_root(path, definitions) is not None else \
        path if path.is_dir() else path.parent
    catalog = Catalog(root)
    catalog.load_all()
    if path.is_dir():
        files = find_test_files(path)
    elif is_test_file(path.name):
        files = [path]
    else:  # a workflow file: its test file
        files = [p for p in (path.with_name(path.stem + ".test.yaml"), path.with_name(path.stem + ".test.yml"))
                 if p.is_file()]
    loaded = [load_test_file(f, catalog) for f in files]
    tested = {c.definition.path for c in loaded if c.definition is not None}
    tested |= {rel.as_posix() for f in files for w in workflow_file_of(f)  # an invalid test file still tests it
               if (rel := relative_to_root(w, root)) is not None}
    untested = []
    if path.is_dir():
        inside = relative_to_root(path, root)
        untested = [d.name for d in catalog.entries() if d.path not in tested
                    and (inside is None or inside == Path(".") or Path(d.path).is_relative_to(inside))]
    return catalog, loaded, untested


def load_test_file(path: Path, catalog: Catalog) -> CaseFile:
    """One test file, checked against the workflow it tests (from `catalog`)."""
    def find(name: str | None, at: Path) -> Definition | None:
        if name is not None:
            return catalog.get(name)
        for candidate in workflow_file_of(at):
            rel = relative_to_root(candidate, catalog.root)
            found = next((d for d in catalog.entries() if rel is not None and d.path == rel.as_posix()), None)
            if found is not None:
                return found.broken or found  # the file as it is on disk, problems and all
        return None

    return load_case_file(path, str(path), find)


def check_test_files(paths: list[Path], catalog: Catalog) -> tuple[int, list[Problem]]:
    """`treadle validate`: the test files among (or under) `paths`, and their problems."""
    files = [f for p in paths for f in (find_test_files(p) if p.is_dir() else [p] if is_test_file(p.name) else [])]
    return len(files), [problem for f in files for problem in load_test_file(f, catalog).problems]


# -- running ---------------------------------------------------------------------


@dataclass
class Difference:
    what: str  # `status`, `steps.fetch.output`, ...
    expected: Any
    got: Any
    note: str = ""  # how it is compared: `(contained)`, `(keys with these values)`
    detail: str = ""  # more about the actual value (the error of a failed step)

    def __str__(self) -> str:
        return (f"{self.what}: expected {_shown(self.expected)}{' ' + self.note if self.note else ''}, "
                f"got {_shown(self.got)}{' ' + self.detail if self.detail else ''}")


@dataclass
class CaseResult:
    file: str
    name: str
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None  # the case could not run (bad params, a missing secret, ...)
    seconds: float = 0.0
    run: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.differences and self.error is None


def _shown(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def run_cases(catalog: Catalog, files: list[CaseFile], *, keyword: str | None = None,
                    timeout: float = CASE_TIMEOUT, on_result: Any = None) -> list[CaseResult]:
    """Every case of the valid `files`, one after the other, in one temporary database."""
    from ..engine.engine import Engine
    from ..storage.store import Store

    results = []
    with tempfile.TemporaryDirectory(prefix="treadle-test-") as tmp:
        async with Store(f"sqlite:///{Path(tmp) / 'test.db'}") as store:
            engine = Engine(store, lookup=catalog.get, definitions_dir=catalog.root, role="test", environ={})
            try:
                for case_file in files:
                    if case_file.spec is None:
                        continue
                    for case in case_file.spec.cases:
                        if keyword and keyword not in case.name:
                            continue
                        result = await _run_case(engine, store, case_file, case, timeout)
                        results.append(result)
                        if on_result is not None:
                            on_result(result)
            finally:
                await engine.close()
    return results


async def _run_case(engine: Any, store: Any, case_file: CaseFile, case: CaseSpec, timeout: float) -> CaseResult:
    from ..engine.mocks import Mocks
    from ..engine.report import run_document

    definition = case_file.definition
    assert definition is not None and definition.spec is not None and case_file.spec is not None
    result = CaseResult(case_file.path, case.name)
    began = time.monotonic()
    # hermetic: the workflow's secrets get placeholders unless the case gives values
    engine.environ = {**{name: f"test-secret-{name}" for name in definition.spec.secrets}, **case.secrets}
    try:
        params = trigger_params(definition, case) if case.trigger is not None else case.params
        new = engine.new_run(definition, params, trigger="test")
    except TreadleError as exc:
        if case.expect.status == "refused":
            if case.expect.error is not None and case.expect.error not in str(exc):
                result.differences.append(Difference("error", case.expect.error, str(exc), note="(contained)"))
        else:
            result.error = f"the run could not start: {exc}"
        result.seconds = time.monotonic() - began
        return result
    store.put_run(new.row, (engine.owner, 1))
    exe = engine.launch(new, mocks=Mocks.of(case_file.spec.mock, case.mock))
    try:
        await asyncio.wait_for(asyncio.shield(exe.wait()), timeout)
    except TimeoutError:
        exe.cancel(f"the test case did not finish within {timeout:g}s")
        await exe.wait()
        result.error = f"the run did not finish within {timeout:g}s (--timeout); it was cancelled"
    await store.flush()
    doc = await run_document(store, exe.id)
    assert doc is not None
    result.run = doc
    result.differences = compare(case, doc)
    result.seconds = time.monotonic() - began
    return result


def trigger_params(definition: Definition, case: CaseSpec) -> dict[str, Any]:
    """The params a trigger would start the run with: its `params:` templates rendered
    over what it received, else its payload (as the launcher does)."""
    from ..templates import render
    from ..triggers.launcher import STRICT_TRIGGERS

    spec = definition.spec
    assert spec is not None and case.trigger is not None
    kind = case.trigger.kind
    payload = dict(getattr(case.trigger, kind) or {})
    if kind == "event":
        context = {"type": payload.get("type", ""), "data": payload.get("data", {}), "id": "test"}
        import fnmatch

        declared = next((e for e in spec.triggers.event if fnmatch.fnmatchcase(context["type"], e.type)),
                        spec.triggers.event[0])
        mapping, default = declared.params, context["data"] if isinstance(context["data"], dict) else {}
    elif kind == "webhook":
        assert spec.triggers.webhook is not None
        context = {"body": payload.get("body", {}), "headers": payload.get("headers", {}),
                   "query": payload.get("query", {})}
        body = context["body"]
        mapping, default = spec.triggers.webhook.params, body if isinstance(body, dict) else {"body": body}
    else:
        path = str(payload.get("path", ""))
        context = {"file": {"path": path, "name": payload.get("name", Path(path).name),
                            "relative": payload.get("relative", path), "size": payload.get("size", 0)}}
        mapping, default = spec.triggers.file[0].params, {"path": path}
    if mapping is not None:
        return render(mapping, context)
    params = dict(default)
    return params if kind in STRICT_TRIGGERS else {k: v for k, v in params.items() if k in spec.params}


# -- comparing -------------------------------------------------------------------


def _has(actual: Any, wanted: dict[str, Any]) -> bool:
    """`actual` (a mapping) has each key of `wanted` with that value (mappings compared the same way)."""
    if not isinstance(actual, dict):
        return False
    for key, value in wanted.items():
        if key not in actual:
            return False
        if isinstance(value, dict) and not _has(actual[key], value):
            return False
        if not isinstance(value, dict) and _json(actual[key]) != _json(value):
            return False
    return True


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # as the database holds it (1.0 == 1, tuples are lists)


def compare(case: CaseSpec, doc: dict[str, Any]) -> list[Difference]:
    """What the run did that the case does not expect."""
    expect = case.expect
    out: list[Difference] = []
    if expect.status == "refused":
        return [Difference("status", "refused", doc["status"], note="(the run should not have started)")]
    if doc["status"] != expect.status:
        out.append(Difference("status", expect.status, doc["status"],
                              detail="" if not doc.get("error") else f"(run error: {doc['error']})"))
    said = doc.get("error") or (doc.get("reason") if doc["status"] == "skipped" else None)
    if expect.error is not None and expect.error not in (said or ""):
        out.append(Difference("error", expect.error, said, note="(contained)"))
    if "outputs" in expect.model_fields_set and _json(doc["outputs"]) != _json(expect.outputs):
        out.append(Difference("outputs", expect.outputs, doc["outputs"]))
    if expect.outputs_has is not None and not _has(doc["outputs"], expect.outputs_has):
        out.append(Difference("outputs", expect.outputs_has, doc["outputs"], note="(keys with these values)"))
    steps = {s["id"]: s for s in doc["steps"]}
    for sid, want in expect.steps.items():
        got = steps.get(sid, {"status": "pending", "attempts": 0, "output": None, "error": None, "exit_code": None})
        where = f"steps.{sid}"
        if want.status is not None and got["status"] != want.status:
            out.append(Difference(f"{where}.status", want.status, got["status"],
                                  detail=f"(error: {got['error']})" if got.get("error") else ""))
        if "output" in want.model_fields_set and _json(got["output"]) != _json(want.output):
            out.append(Difference(f"{where}.output", want.output, got["output"]))
        if want.output_has is not None and not _has(got["output"], want.output_has):
            out.append(Difference(f"{where}.output", want.output_has, got["output"], note="(keys with these values)"))
        if want.error is not None and want.error not in (got.get("error") or ""):
            out.append(Difference(f"{where}.error", want.error, got.get("error"), note="(contained)"))
        if want.exit_code is not None and got.get("exit_code") != want.exit_code:
            out.append(Difference(f"{where}.exit_code", want.exit_code, got.get("exit_code")))
        if want.attempts is not None and got["attempts"] != want.attempts:
            out.append(Difference(f"{where}.attempts", want.attempts, got["attempts"]))
    for sid in expect.ran:
        got = steps.get(sid)
        if got is None or not got["attempts"]:
            out.append(Difference(f"ran {sid}", "ran", got["status"] if got else "not reached",
                                  note="(at least one attempt)"))
    for sid in expect.not_ran:
        got = steps.get(sid)
        if got is not None and got["attempts"]:
            out.append(Difference(f"not_ran {sid}", "not run", f"ran ({got['status']})"))
    return out


# -- reporting -------------------------------------------------------------------


def _print_result(result: CaseResult) -> None:
    mark = "PASSED" if result.passed else "FAILED"
    print(f"{result.file}::{result.name} {mark} ({result.seconds:.2f}s)", flush=True)


def _print_failures(results: list[CaseResult]) -> None:
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    print("\n" + " FAILURES ".center(72, "="))
    for r in failed:
        print(f"\n{r.file}::{r.name}".rstrip())
        if r.error:
            print(f"  {r.error}")
        for diff in r.differences:
            print(f"  {diff}")
        if r.run is not None and r.differences:
            steps = ", ".join(f"{s['id']} {s['status']}" for s in r.run["steps"])
            print(f"  (run {r.run['id']}: {r.run['status']}; steps: {steps})")


def write_junit(path: Path, results: list[CaseResult], invalid: list[CaseFile]) -> None:
    """JUnit XML: one testsuite per test file, one testcase per case; an invalid test
    file is a suite with one error."""
    suites = ET.Element("testsuites", name="treadle test")
    by_file: dict[str, list[CaseResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    for file, cases in by_file.items():
        failures = sum(1 for r in cases if r.differences and r.error is None)
        errors = sum(1 for r in cases if r.error is not None)
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(cases)), failures=str(failures),
                              errors=str(errors), time=f"{sum(r.seconds for r in cases):.3f}")
        for r in cases:
            tc = ET.SubElement(suite, "testcase", classname=file, name=r.name, time=f"{r.seconds:.3f}")
            if r.error is not None:
                ET.SubElement(tc, "error", message=r.error).text = r.error
            elif r.differences:
                text = "\n".join(str(d) for d in r.differences)
                ET.SubElement(tc, "failure", message=str(r.differences[0])).text = text
    for bad in invalid:
        suite = ET.SubElement(suites, "testsuite", name=bad.path, tests="1", failures="0", errors="1", time="0")
        tc = ET.SubElement(suite, "testcase", classname=bad.path, name="(test file)", time="0")
        text = "\n".join(str(p) for p in bad.problems)
        ET.SubElement(tc, "error", message=str(bad.problems[0]) if bad.problems else "invalid").text = text
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def cmd_test(args: argparse.Namespace) -> int:
    path = Path(args.path or args.definitions)
    if not path.exists():
        print(f"treadle test: {path}: no such file or folder", file=sys.stderr)
        return 2
    began = time.monotonic()
    catalog, files, untested = collect(path, Path(args.definitions))
    invalid = [f for f in files if f.problems]
    for bad in invalid:
        for problem in bad.problems:
            print(problem, file=sys.stderr)
    if not files:
        print(f"treadle test: no test files under {path} (a workflow NAME.yaml is tested by NAME.test.yaml "
              "beside it)", file=sys.stderr)
    results = asyncio.run(run_cases(catalog, files, keyword=args.keyword, timeout=args.timeout,
                                    on_result=_print_result))
    _print_failures(results)
    if args.junit_xml:
        write_junit(Path(args.junit_xml), results, invalid)
    passed = sum(r.passed for r in results)
    parts = [f"{passed} passed"] + ([f"{len(results) - passed} failed"] if len(results) > passed else [])
    if invalid:
        parts.append(f"{len(invalid)} invalid test file{'s' if len(invalid) != 1 else ''}")
    summary = f" {', '.join(parts)} in {time.monotonic() - began:.2f}s "
    print("\n" + summary.center(72, "="))
    if untested:
        print(f"no test file: {', '.join(untested)}", file=sys.stderr)
    if invalid:
        return 2
    return 0 if passed == len(results) else 1
