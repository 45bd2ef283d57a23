"""`treadle start NAME`: start a run on a Treadle server (through its API), and with
`--wait` wait for its result.

`treadle run` runs a workflow in this process; `start` asks a running server
(`treadle serve`), so the run is recorded, queued, audited and driven there like one
started from the dashboard. Waiting uses the API's `wait=` (docs/api.md): one
request waits up to WAIT_STEP, then the run's `Location` is asked again until the
run ends or `--wait DURATION` is over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8080"
WAIT_STEP_SECONDS = 60.0  # per request: well under the server's cap and most proxies' idle timeouts
EXIT_STILL_RUNNING = 124  # like timeout(1): `--wait DURATION` ran out, the run goes on


def server_options(p: argparse.ArgumentParser) -> None:
    """`--server` and `--token`, for the commands that talk to a server's API."""
    p.add_argument("--server", default=os.environ.get("TREADLE_SERVER") or DEFAULT_SERVER,
                   help=f"the Treadle server's URL (default {DEFAULT_SERVER}; env TREADLE_SERVER)")
    p.add_argument("--token", default=os.environ.get("TREADLE_TOKEN"),
                   help="API token, scope run (env TREADLE_TOKEN); not needed for a local open server")


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from . import _duration_arg

    p = sub.add_parser("start", help="start a run on a Treadle server; --wait for its result")
    p.add_argument("name", help="workflow name")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--version", metavar="V", help="run this recorded version of the workflow (a rollback), "
                                                  "not the one in force")
    p.add_argument("--wait", nargs="?", const=float("inf"), type=_duration_arg, metavar="DURATION",
                   help="wait for the run to end (at most DURATION, e.g. 10m); the exit code is its result")
    p.add_argument("--json", action="store_true", help="print the answer (with --wait: the finished run) as JSON")
    server_options(p)
    p.set_defaults(func=cmd_start)


class Api:
    """A small client of a server's JSON API; a refusal becomes a TreadleError."""

    def __init__(self, server: str, token: str | None):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self.client = httpx.Client(base_url=self.server, headers=headers, timeout=WAIT_STEP_SECONDS + 30)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        import httpx

        from ..errors import ServerCheckFailed

        try:
            answer = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ServerCheckFailed(f"cannot reach {self.server} ({exc}); is `treadle serve` running there? "
                                    "(--server URL or TREADLE_SERVER)") from None
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        if answer.status_code >= 400:
            raise _refusal(self.server, answer.status_code, body)
        return answer.status_code, body, dict(answer.headers)


def _refusal(server: str, status: int, body: Any) -> Exception:
    from ..errors import ServerCheckFailed, TreadleError

    detail = body.get("detail") if isinstance(body, dict) else str(body)[:300]
    if status in (401, 403):
        detail = f"{detail} (pass a token with --token or TREADLE_TOKEN)"
    error = ServerCheckFailed(f"{server} answered {status}: {detail}") if status < 500 else \
        TreadleError(f"{server} answered {status}: {detail}")
    if isinstance(body, dict) and body.get("errors"):
        print(json.dumps(body["errors"], indent=2), file=sys.stderr)
    return error


def parse_params(pairs: list[str]) -> dict[str, str]:
    from . import _parse_params

    return _parse_params(pairs)


def cmd_start(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    params = parse_params(args.param)
    body: dict[str, Any] = {"params": params, "params_as_text": True}
    query: dict[str, str] = {}
    if args.version:
        body["version"] = args.version
    deadline = time.monotonic() + args.wait if args.wait is not None else None
    if deadline is not None:
        query["wait"] = f"{min(args.wait, WAIT_STEP_SECONDS):g}s"
    with Api(args.server, args.token) as api:
        status, answer, headers = api.call("POST", f"/api/workflows/{quote(args.name, safe='')}/runs",
                                           json=body, params=query)
        if deadline is None:
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                print(f"run {answer['run_id']} of {answer['workflow']} {answer['status']}"
                      + (f" ({answer['reason']})" if answer.get("reason") else ""), file=sys.stderr)
                print(answer["run_id"])
            return 0
        if status == 202 and not args.json:
            print(f"run {answer['run_id']} of {answer['workflow']} {answer['status']}; waiting for it to end",
                  file=sys.stderr)
        while status == 202:  # the run is still going: ask its Location again
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"run {answer['run_id']} has not ended within --wait; it goes on "
                      f"({api.server}{answer['url']})", file=sys.stderr)
                return EXIT_STILL_RUNNING
            run_id = answer["run_id"]
            _, doc, _ = api.call("GET", headers.get("location") or f"/api/runs/{run_id}",
                                 params={"wait": f"{min(left, WAIT_STEP_SECONDS):.3f}s", "attempts": "false"})
            if doc["status"] in ("succeeded", "failed", "cancelled", "skipped"):
                answer, status = doc, 200
        return _finished(answer, args.json)


def _finished(doc: dict[str, Any], as_json: bool) -> int:
    from ..dsl.durations import format_duration

    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        took = format_duration((doc.get("duration_ms") or 0) / 1000)
        line = f"run {doc['id']} of {doc['workflow']} (version {doc['version']}) {doc['status']} in {took}"
        print(line + (f": {doc['error']}" if doc.get("error") else ""), file=sys.stderr)
        if doc.get("outputs") is not None:  # what the run made, on stdout for a script to read
            outputs = doc["outputs"]
            print(outputs if isinstance(outputs, str) else json.dumps(outputs, indent=2, default=str))
    return 0 if doc["status"] == "succeeded" else 1
