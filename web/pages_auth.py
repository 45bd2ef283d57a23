"""Sign in and out of the dashboard: a token is exchanged for a session cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it) and Secure when the dashboard is served over https. Every attempt is in
the audit log; the sign-in route is rate limited (see app.py).
"""

from __future__ import annotations

from litestar import Request, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from runner.security import audit

from . import rate_limits
from .api import _services
from .auth import COOKIE, identity_of


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@get("/signin", name="page-signin", include_in_schema=False, opt={"public": True})
async def signin_page(request: Request, next: FromQuery[str | None] = None) -> Template:  # noqa: A002
    return Template("signin.html", context={"next": _safe_next(next), "error": None, "nav": ""})


@post("/signin", name="page-signin-post", include_in_schema=False, opt={"public": True},
      middleware=[rate_limits.SIGNIN.middleware])
async def signin(request: Request) -> Template | Redirect:
    services = _services(request)
    form = await request.form()
    target = _safe_next(form.get("next"))
    identity = await services.tokens.check(str(form.get("token") or "").strip())
    client = request.client.host if request.client else None
    if identity is None:
        audit.record(services.store, who="anonymous", source=client, action="signin", result="denied", status=401)
        return Template("signin.html", context={"next": target, "error": "That token is not valid (mistyped, or revoked).",
                                                "nav": ""}, status_code=401)
    sid = await services.tokens.open_session(identity)
    audit.record(services.store, who=identity.name, source=client, action="signin", result="ok", status=303)
    secure = request.url.scheme == "https"
    cookie = Cookie(key=COOKIE, value=sid, httponly=True, samesite="strict", secure=secure, path="/",
                    max_age=12 * 3600)
    return Redirect(target, status_code=303, cookies=[cookie])


@post("/signout", name="page-signout", include_in_schema=False, opt={"scope": "read", "audit": "signout"})
async def signout(request: Request) -> Redirect:
    services = _services(request)
    if identity_of(request).via == "session":
        await services.tokens.close_session(request.cookies.get(COOKIE))
    return Redirect("/signin", status_code=303, cookies=[Cookie(key=COOKIE, value="", max_age=0, path="/")])


AUTH_PAGES = [signin_page, signin, signout]
