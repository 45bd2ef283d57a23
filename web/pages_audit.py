"""The audit log page (admin scope, no namespace)."""

from __future__ import annotations

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from runner.security import audit

from .api import _services
from .api_admin import ADMIN

PER_PAGE = 100


@get("/audit", name="page-audit", include_in_schema=False, opt=ADMIN)
async def audit_page(request: Request, action: FromQuery[str | None] = None, who: FromQuery[str | None] = None,
                     page: FromQuery[int | None] = None) -> Template:
    store = _services(request).store
    await store.flush()
    number = max(1, page or 1)
    rows, total = await audit.entries(store, action=action or None, who=who or None,
                                      offset=(number - 1) * PER_PAGE, limit=PER_PAGE)
    return Template("audit.html", context={"entries": rows, "total": total, "page": number, "nav": "audit",
                                           "pages": max(1, -(-total // PER_PAGE)), "action": action,
                                           # not `who`: every page has `who`, the signed-in identity
                                           "by": who, "filtered": bool(action or who)})


AUDIT_PAGES = [audit_page]
