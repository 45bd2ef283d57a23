"""Authentication and authorization against a real server: every scope x every route,
within and outside a namespace; sign-in, CSRF, Host and Origin checks, the audit
log, rate limits, and the refusal to listen beyond loopback without tokens."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import BACKENDS, database_url
from tests.web_server import free_port, serving

ADMIN = "admin-token-for-tests-0123456789"
DEFINITIONS = {
    "orders/ship.yaml": "steps: [{id: a, log: shipped}]\n",
    "billing/invoice.yaml": "steps: [{id: a, log: billed}]\n",
    "top.yaml": "name: top\nsteps: [{id: a, log: top}]\n",
}
TOKENS = {  # name: (scope, namespace)
    "reader": ("read", None), "runner": ("run", None), "boss": ("admin", None),
    "orders-reader": ("read", "orders"), "orders-runner": ("run", "orders"), "orders-admin": ("admin", "orders"),
}


def finished(client: httpx.Client, run_id: str) -> dict:
    for _ in range(400):
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.025)
    raise AssertionError(f"run {run_id} did not end")


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("security")
    db = database_url(request.param, root, request)
    with serving(root, DEFINITIONS, watch=False, admin_token=ADMIN, db=db) as base:
        admin = httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})
        tokens = {}
        for name, (scope, ns) in TOKENS.items():
            answer = admin.post("/api/tokens", json={"name": name, "scope": scope, "namespace": ns})
            assert answer.status_code == 201, answer.text
            tokens[name] = answer.json()["token"]
        runs = {wf: admin.post(f"/api/workflows/{wf}/runs", json={}).json()["run_id"] for wf in ("ship", "invoice")}
        for run_id in runs.values():
            finished(admin, run_id)
        yield SimpleNamespace(base=base, admin=admin, tokens=tokens, runs=runs, root=root)
        admin.close()


def client(site: SimpleNamespace, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {site.tokens.get(token, token)}"} if token else {}
    return httpx.Client(base_url=site.base, timeout=10, headers=headers, follow_redirects=False)


# (method, path, needed scope, namespace of the target or None, needs a token without namespace)
ROUTES = [
    ("GET", "/api/workflows/{wf}", "read", True, False),
    ("GET", "/api/runs/{run}", "read", True, False),
    ("GET", "/api/runs/{run}/steps/a/logs", "read", True, False),
    ("GET", "/api/workflows/{wf}/versions", "read", True, False),
    ("GET", "/api/workflows/{wf}/triggers", "read", True, False),
    ("POST", "/api/workflows/{wf}/dry-run", "read", True, False),
    ("GET", "/workflows/{wf}", "read", True, False),
    ("GET", "/runs/{run}", "read", True, False),
    ("POST", "/api/workflows/{wf}/runs", "run", True, False),
    ("POST", "/api/runs/{run}/cancel", "run", True, False),
    ("POST", "/api/runs/{run}/retry", "run", True, False),
    ("POST", "/api/workflows/{wf}/pause", "admin", True, False),
    ("POST", "/api/workflows/{wf}/resume", "admin", True, False),
    ("POST", "/api/workflows/{wf}/unpin", "admin", True, False),
    ("GET", "/api/workflows", "read", False, False),
    ("GET", "/api/runs", "read", False, False),
    ("GET", "/api/approvals", "read", False, False),
    ("POST", "/api/events", "run", False, False),
    ("GET", "/api/audit", "admin", False, True),
    ("GET", "/api/tokens", "admin", False, True),
    ("POST", "/api/sync", "admin", False, True),
]
RANK = {"read": 0, "run": 1, "admin": 2}
# what an allowed call answers when it is not a plain 200: (status, error_code of a 4xx)
ALLOWED_ANSWERS: dict[tuple[str, str], tuple[int, str | None]] = {
    ("POST", "/api/workflows/{wf}/runs"): (202, None),
    ("POST", "/api/runs/{run}/retry"): (202, None),
    ("POST", "/api/events"): (202, None),
    ("POST", "/api/runs/{run}/cancel"): (409, "RUN_FINISHED"),  # the run of `site` has ended
    ("POST", "/api/sync"): (409, "NOT_FOLLOWING_GIT"),  # the server follows no git repository
}


@pytest.mark.parametrize("token", [None, *TOKENS])
@pytest.mark.parametrize("target", ["ship", "invoice"])
def test_authorization_matrix(site: SimpleNamespace, token: str | None, target: str) -> None:
    """Each scope x each route, on a workflow in the `orders` namespace and one outside it."""
    scope, namespace = TOKENS.get(token, (None, None))
    target_ns = "orders" if target == "ship" else "billing"
    with client(site, token) as c:
        for method, template, needed, item, needs_global in ROUTES:
            path = template.format(wf=target, run=site.runs[target])
            body = {"type": "nothing.listens"} if path == "/api/events" else {}
            answer = c.request(method, path, json=body if method == "POST" else None)
            if token is None:
                expected = {303} if not path.startswith("/api/") else {401}
                assert answer.status_code in expected, (method, path, answer.status_code)
            elif RANK[scope] < RANK[needed] or (needs_global and namespace is not None):
                assert answer.status_code == 403, (token, method, path, answer.status_code, answer.text)
                if path.startswith("/api/"):
                    assert answer.json()["error_code"] == "INSUFFICIENT_SCOPE", (token, method, path, answer.text)
            elif item and namespace is not None and namespace != target_ns:
                assert answer.status_code == 404, (token, method, path, answer.status_code)
            else:  # allowed: the route's own answer, never an error of the server
                status, error_code = ALLOWED_ANSWERS.get((method, template), (200, None))
                assert answer.status_code == status, (token, method, path, answer.status_code, answer.text)
                if error_code is not None:
                    assert answer.json()["error_code"] == error_code, (token, method, path, answer.text)
            # every answer, refusals included, carries the policy
            assert "default-src" in answer.headers.get("content-security-policy", ""), (token, method, path)


def test_a_namespaced_token_lists_only_its_namespace(site: SimpleNamespace) -> None:
    with client(site, "orders-reader") as c:
        assert [w["name"] for w in c.get("/api/workflows").json()["items"]] == ["ship"]
        assert {r["workflow"] for r in c.get("/api/runs").json()["items"]} == {"ship"}
        assert "invoice" not in c.get("/").text and "ship" in c.get("/").text
        assert site.runs["invoice"] not in c.get("/runs").text
    with client(site, "reader") as c:
        assert {w["name"] for w in c.get("/api/workflows").json()["items"]} == {"ship", "invoice", "top"}
    with client(site, "orders-runner") as c:  # an event reaches only the namespace's listeners
        assert c.post("/api/events", json={"type": "x"}).json()["runs"] == []


def test_no_or_bad_credentials(site: SimpleNamespace) -> None:
    with client(site, None) as c:
        answer = c.get("/api/workflows")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        page = c.get("/runs?workflow=ship")
        assert page.status_code == 303 and page.headers["location"] == "/signin?next=/runs%3Fworkflow%3Dship"
        assert c.get("/health").status_code == 200  # health stays open for probes
        assert c.get("/signin").status_code == 200
    with client(site, "trd_not-a-token") as c:
        answer = c.get("/api/workflows")
        assert answer.status_code == 401 and answer.json()["error_code"] == "INVALID_TOKEN"


def sign_in(site: SimpleNamespace, token: str) -> httpx.Client:
    c = httpx.Client(base_url=site.base, timeout=10, follow_redirects=False)
    answer = c.post("/signin", data={"token": site.tokens.get(token, token), "next": "/runs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/runs", answer.text
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return c


def csrf_of(c: httpx.Client) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', c.get("/runs").text).group(1)


def test_sign_in_session_and_csrf(site: SimpleNamespace) -> None:
    c = sign_in(site, "runner")
    assert c.get("/api/workflows").status_code == 200  # the cookie works for the API too
    assert "runner" in c.get("/runs").text
    before = c.get("/api/runs", params={"workflow": "top"}).json()["total"]
    # a form without the CSRF token (what a forged cross-site form would send) is refused
    refused = c.post("/workflows/top/runs", data={})
    assert refused.status_code == 403 and "reload the page" in refused.text
    assert c.post("/workflows/top/runs", data={"csrf_token": "0" * 64}).status_code == 403
    assert c.get("/api/runs", params={"workflow": "top"}).json()["total"] == before
    ok = c.post("/workflows/top/runs", data={"csrf_token": csrf_of(c)})
    assert ok.status_code == 303 and ok.headers["location"].startswith("/runs/")
    # another session has another CSRF token
    other = sign_in(site, "runner")
    assert csrf_of(other) != csrf_of(c)
    assert other.post("/workflows/top/runs", data={"csrf_token": csrf_of(c)}).status_code == 403
    # signing out ends the session
    assert c.post("/signout", data={"csrf_token": csrf_of(c)}).status_code == 303
    assert c.get("/api/workflows").status_code == 401
    other.close()
    c.close()


def test_a_wrong_token_does_not_sign_in_and_is_audited(site: SimpleNamespace) -> None:
    c = httpx.Client(base_url=site.base, timeout=10, follow_redirects=False)
    answer = c.post("/signin", data={"token": "trd_guess", "next": "https://evil.example/"})
    assert answer.status_code == 401 and "not valid" in answer.text and "set-cookie" not in answer.headers
    # a successful sign-in never redirects to another site
    assert c.post("/signin", data={"token": site.tokens["reader"], "next": "//evil.example/x"}).headers["location"] == "/"
    audit = site.admin.get("/api/audit", params={"action": "signin"}).json()["items"]
    assert any(e["result"] == "denied" and e["who"] == "anonymous" for e in audit)
    assert any(e["result"] == "ok" and e["who"] == "reader" for e in audit)
    c.close()


def test_revoking_a_token_ends_its_sessions(site: SimpleNamespace) -> None:
    made = site.admin.post("/api/tokens", json={"name": "temp", "scope": "read"}).json()["token"]
    c = sign_in(site, made)
    assert c.get("/api/workflows").status_code == 200
    assert site.admin.delete("/api/tokens/temp").status_code == 200
    assert c.get("/api/workflows").status_code == 401
    with client(site, made) as bearer:
        assert bearer.get("/api/workflows").status_code == 401
    assert site.admin.delete("/api/tokens/temp").status_code == 404
    listed = {t["name"]: t for t in site.admin.get("/api/tokens").json()}
    assert listed["temp"]["revoked_at"] and "token" not in listed["temp"]
    c.close()


def test_cross_site_requests_and_foreign_hosts_are_refused(site: SimpleNamespace) -> None:
    with client(site, "boss") as c:
        before = c.get("/api/runs", params={"workflow": "top"}).json()["total"]
        foreign = c.post("/api/workflows/top/runs", json={}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error_code"] == "CROSS_SITE"
        rebound = c.get("/api/workflows", headers={"Host": "evil.example"})
        assert rebound.status_code == 400 and rebound.json()["error_code"] == "HOST_NOT_ALLOWED"
        assert c.get("/api/runs", params={"workflow": "top"}).json()["total"] == before
        assert c.get("/api/workflows", headers={"Host": f"localhost:{site.base.rsplit(':', 1)[1]}"}).status_code == 200


def test_the_audit_log_says_who_did_what(site: SimpleNamespace) -> None:
    with client(site, "runner") as c:
        started = c.post("/api/workflows/top/runs", json={}).json()["run_id"]
        finished(c, started)
        assert c.post(f"/api/runs/{started}/retry", json={}).status_code == 202
        assert c.post("/api/workflows/top/pause").status_code == 403  # denied: recorded too
    with client(site, "boss") as c:
        assert c.post("/api/workflows/top/pause").status_code == 200
        assert c.post("/api/workflows/top/resume").status_code == 200
    entries = site.admin.get("/api/audit", params={"limit": 500}).json()["items"]
    mine = [(e["who"], e["action"], e["result"], e["target"]) for e in entries]
    assert ("runner", "run.start", "ok", "top") in mine
    assert ("runner", "run.retry", "ok", started) in mine
    assert ("runner", "workflow.pause", "denied", "top") in mine
    assert ("boss", "workflow.pause", "ok", "top") in mine and ("boss", "workflow.resume", "ok", "top") in mine
    assert ("admin-token", "token.create", "ok", None) in [(w, a, r, None) for w, a, r, _ in mine]
    start = next(e for e in entries if e["action"] == "run.start" and e["who"] == "runner")
    assert start["detail"]["run_id"] == started and start["source"] == "127.0.0.1" and start["at"]
    # the page shows the same entries, to admins only
    with client(site, "boss") as c:
        assert "workflow.pause" in c.get("/audit").text
    with client(site, "runner") as c:
        assert c.get("/audit").status_code == 403


def test_sign_in_is_rate_limited(site: SimpleNamespace) -> None:
    c = httpx.Client(base_url=site.base, timeout=10)
    answers = [c.post("/signin", data={"token": "trd_wrong"}) for _ in range(12)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert int(limited[0].headers["retry-after"]) > 0
    c.close()


def test_open_mode_on_loopback_still_needs_csrf_on_forms(tmp_path: Path) -> None:
    with serving(tmp_path, {"w.yaml": "steps: [{id: a, log: x}]\n"}, watch=False) as base, \
            httpx.Client(base_url=base, timeout=10) as c:
        page = c.get("/")
        assert "Open for local development" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert c.post("/workflows/w/runs", data={}).status_code == 403
        token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)
        assert c.post("/workflows/w/runs", data={"csrf_token": token}).status_code == 303
        assert c.get("/", headers={"Host": "attacker.example:80"}).status_code == 400  # DNS rebinding
        assert c.post("/api/workflows/w/runs", json={}).status_code == 202  # curl from this machine


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "runner", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
                           "--db", f"sqlite:///{tmp_path / 'db.sqlite'}", "--definitions", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in done.stderr
    assert "--insecure" in done.stderr


def test_a_request_body_over_the_limit_is_413(site: SimpleNamespace) -> None:
    from runner.limits import MAX_REQUEST_BODY_BYTES

    with client(site, "boss") as c:
        before = c.get("/api/runs", params={"workflow": "top"}).json()["total"]
        big = {"params": {"x": "a" * (MAX_REQUEST_BODY_BYTES + 10)}}
        answer = c.post("/api/workflows/top/runs", json=big)
        assert answer.status_code == 413 and answer.json()["error_code"] == "TOO_LARGE"
        assert "limit of 1024 KiB" in answer.json()["detail"]
        assert c.get("/api/runs", params={"workflow": "top"}).json()["total"] == before
