"""JSON API of approval steps: decide (approve / reject) and list what waits.

`decide` is shared with the dashboard's forms (web/pages.py).
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict
from urllib.parse import quote

import msgspec
from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from runner.engine.approvals import APPROVED, REJECTED, Key
from runner.engine.report import iso
from runner.errors import RunNotFound
from runner.storage.models import RunStatus

from .api import Limit, Page, _errors, _services
from .auth import identity_of, visible_names
from .run_view import definition_of
from .services import RunConflict, Services

MAX_COMMENT = 2000
MAX_BY = 200


class DecisionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/runs/{id}/steps/{step}/approve and /reject (all optional)."""

    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT)] | None = None
    by: Annotated[str, msgspec.Meta(max_length=MAX_BY)] | None = None
    index: Annotated[int, msgspec.Meta(ge=0)] | None = None  # the foreach item, for a foreach approval


class DecisionDoc(TypedDict):
    run_id: str
    step: str
    index: int | None
    decision: str  # approved | rejected
    approved: bool
    by: str | None
    comment: str | None
    at: str | None


class ApprovalDoc(TypedDict):
    run_id: str
    workflow: str
    step: str
    index: int | None
    message: str
    since: str | None
    deadline: str | None  # when the step fails for want of a decision; null without a timeout
    url: str  # the run's page on the dashboard


class ApprovalPage(TypedDict):
    items: list[ApprovalDoc]
    total: int
    page: int
    limit: int


def approval_doc(row: dict[str, Any]) -> ApprovalDoc:
    return {"run_id": row["run_id"], "workflow": row["workflow"], "step": row["step_id"],
            "index": row["item"] if row["item"] >= 0 else None, "message": row["message"],
            "since": iso(row["requested_at"]), "deadline": iso(row["deadline"]),
            "url": f"/runs/{quote(row['run_id'], safe='')}"}


def decision_doc(row: dict[str, Any]) -> DecisionDoc:
    return {"run_id": row["run_id"], "step": row["step_id"], "index": row["item"] if row["item"] >= 0 else None,
            "decision": row["decision"], "approved": row["decision"] == APPROVED, "by": row["by"],
            "comment": row["comment"], "at": iso(row["decided_at"])}


async def decide(services: Services, run_id: str, step_id: str, approve: bool, *, by: str | None,
                 comment: str | None, index: int | None) -> DecisionDoc:
    """Record a person's decision on a waiting approval step.

    Raises RunNotFound / NotFoundException (404) for an unknown run or step, and
    RunConflict (409) when that step is not waiting for a decision now.
    """
    run = await services.store.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    definition = await definition_of(services, run)
    if definition is not None and definition.spec is not None:
        step = next((s for s in definition.spec.steps if s.id == step_id), None)
        if step is None:
            raise NotFoundException(f"run '{run_id}' has no step '{step_id}'")
        if step.kind != "approval":
            raise RunConflict(f"step '{step_id}' is a '{step.kind}' step, not an approval", "NOT_AN_APPROVAL")
    if RunStatus(run["status"]).finished:
        raise RunConflict(f"run '{run_id}' has ended ({run['status']}); nothing waits for a decision",
                          "APPROVAL_NOT_WAITING")
    approvals = services.engine.approvals
    if index is None:  # a foreach approval with one item waiting needs no index
        waiting, _ = await approvals.pending(run_id=run_id, step_id=step_id, limit=2)
        items = [r["item"] for r in waiting]
        if len(items) > 1:
            raise RunConflict(f"several items of step '{step_id}' wait for a decision; give their `index`",
                              "APPROVAL_INDEX_NEEDED")
        index = items[0] if items else -1
    key = Key(run_id, step_id, index)
    row = await approvals.decide(key, APPROVED if approve else REJECTED, (by or "").strip() or None,
                                 (comment or "").strip() or None)
    if row is None:
        known = await approvals.get(key)
        where = f"step '{step_id}'" + (f" item {index}" if index >= 0 else "") + f" of run '{run_id}'"
        if known is None:
            raise RunConflict(f"{where} is not waiting for a decision (it has not reached its approval)",
                              "APPROVAL_NOT_WAITING")
        said = f"{known['decision'].replace('_', ' ')}" + (f" by {known['by']}" if known["by"] else "")
        raise RunConflict(f"{where} is not waiting for a decision: already {said}", "APPROVAL_NOT_WAITING")
    return decision_doc(row)


def decided_by(request: Request, given: str | None, default: str) -> str:
    """Who decides: the signed-in identity (a token's name, or the token a dashboard
    session signed in with), whatever the request says; only a server running open
    (no tokens, loopback) records the free-text `by`, as nobody is signed in."""
    identity = identity_of(request)
    if identity.via != "open":
        return identity.name
    return (given or "").strip()[:MAX_BY] or default


async def _decide(request: Request, run_id: str, step_id: str, approve: bool,
                  data: DecisionRequest | None) -> DecisionDoc:
    body = data or DecisionRequest()
    return await decide(_services(request), run_id, step_id, approve, by=decided_by(request, body.by, "api"),
                        comment=body.comment, index=body.index)


@post("/api/runs/{run_id:str}/steps/{step_id:str}/approve", status_code=200, opt={"audit": "approval.approve"}, tags=["approvals"],
      responses=_errors(400, 404, 409))
async def approve(request: Request, run_id: FromPath[str], step_id: FromPath[str],
                  data: JSONBody[DecisionRequest | None] = None) -> DecisionDoc:
    """Approve a waiting approval step: it succeeds with `{approved, by, comment, at}`.

    Body (optional): `comment`, `by` (only on a server running open, default `api`;
    otherwise the signed-in token's name is recorded), `index` (the foreach item).
    409 when the step is not waiting for a decision (already decided, not an
    approval step, not reached yet, or the run has ended).
    """
    return await _decide(request, run_id, step_id, True, data)


@post("/api/runs/{run_id:str}/steps/{step_id:str}/reject", status_code=200, opt={"audit": "approval.reject"}, tags=["approvals"],
      responses=_errors(400, 404, 409))
async def reject(request: Request, run_id: FromPath[str], step_id: FromPath[str],
                 data: JSONBody[DecisionRequest | None] = None) -> DecisionDoc:
    """Reject a waiting approval step: it fails with `rejected by <who>: <comment>` (no retry)."""
    return await _decide(request, run_id, step_id, False, data)


@get("/api/approvals", tags=["approvals"], responses=_errors(400))
async def list_approvals(request: Request, page: Page = 1, limit: Limit = 50) -> ApprovalPage:
    """The approvals waiting for a decision now, oldest first."""
    rows, total = await _services(request).engine.approvals.pending(offset=(page - 1) * limit, limit=limit,
                                                                    workflows=visible_names(request))
    return {"items": [approval_doc(r) for r in rows], "total": total, "page": page, "limit": limit}


APPROVAL_ROUTES = [approve, reject, list_approvals]
