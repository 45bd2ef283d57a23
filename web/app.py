"""`create_app(settings)`: the Litestar app serving the JSON API and the dashboard."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment
from litestar import Litestar, Request, Response
from litestar.datastructures import ResponseHeader
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from runner import __version__
from runner.errors import (
    TreadleError,
    WorkflowInvalid,
)
from runner.limits import MAX_REQUEST_BODY_BYTES

from .allow import options_handlers
from .api import API_ROUTES
from .api_admin import ADMIN_ROUTES
from .api_approvals import APPROVAL_ROUTES
from .api_backfills import BACKFILL_ROUTES
from .api_breakers import BREAKER_ROUTES
from .api_metrics import METRICS_ROUTES
from .api_notifications import NOTIFICATION_ROUTES
from .api_plan import PLAN_ROUTES
from .api_secrets import SECRET_ROUTES
from .api_triggers import TRIGGER_ROUTES
from .api_versions import VERSION_ROUTES
from .auth import auth_middleware
from .errors_json import error_body
from .headers import SECURITY_HEADERS
from .json_body import TreadleRequest
from .openapi_conform import conform
from .pages import PAGE_ROUTES, register_template_helpers
from .pages_audit import AUDIT_PAGES
from .pages_auth import AUTH_PAGES
from .pages_backfills import BACKFILL_PAGES
from .pages_plan import PLAN_PAGES
from .pages_triggers import TRIGGER_PAGES
from .pages_versions import VERSION_PAGES
from .query_check import refuse_unknown_query
from .services import Services, Settings

HERE = Path(__file__).parent
log = logging.getLogger("treadle.web")


def error_response(request: Request, status: int, detail: str, code: str, extra: dict | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The SPEC's JSON error form."""
    body = error_body(request.url.path, detail, code, extra)
    return Response(body, status_code=status, media_type="application/json", headers={**SECURITY_HEADERS, **(headers or {})})


def _treadle_error(request: Request, exc: TreadleError) -> Response:
    status = exc.http_status or 400  # every error says its own status (runner/errors.py)
    extra: dict = {}
    if getattr(exc, "errors", None) is not None:  # ParamError, a webhook's rejected params
        extra["errors"] = exc.errors  # type: ignore[attr-defined]
    if isinstance(exc, WorkflowInvalid):
        extra["errors"] = [str(p) for p in exc.problems]
    return error_response(request, status, str(exc), exc.error_code, extra)


def _http_error(request: Request, exc: HTTPException) -> Response | Template:
    if exc.status_code == 404 and _wants_page(request):
        # a person typed or followed a URL: an HTML page with the navigation, not JSON
        return Template("error.html", status_code=404, context={
            "title": "Page not found", "message": f"There is no page at {request.url.path}."})
    code = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 409: "CONFLICT",
            413: "TOO_LARGE", 422: "UNPROCESSABLE", 429: "TOO_MANY_REQUESTS"}.get(exc.status_code, "HTTP_ERROR")
    extra = {"errors": exc.extra} if isinstance(exc, ValidationException) and exc.extra else None
    detail = str(exc.detail)
    if isinstance(exc, ValidationException):
        code = "VALIDATION_ERROR"
    elif isinstance(exc.__cause__, SerializationException):
        # msgspec's decode errors ("Input data was truncated") say nothing about JSON
        code, detail = "MALFORMED_BODY", f"the body is not valid JSON: {detail}"
    if exc.status_code == 413:
        detail = f"the request body is larger than the limit of {MAX_REQUEST_BODY_BYTES // 1024} KiB; send less"
    headers = dict(exc.headers or {})
    if exc.status_code == 429 and "RateLimit-Reset" in headers:
        headers["Retry-After"] = headers["RateLimit-Reset"]  # seconds until the window frees a slot
        detail = "too many requests from this address; try again after Retry-After seconds"
    return error_response(request, exc.status_code, detail, code, extra, headers)  # e.g. Allow on 405


SWAGGER = "/static/vendor/swagger-ui-5.35.0"


class VendoredSwagger(SwaggerRenderPlugin):
    """Swagger UI at /schema/swagger from vendored files (no CDN at run time) and with no
    inline script (the Content-Security-Policy allows none): static/swagger-init.js."""

    def render(self, request: Request, openapi_schema: dict) -> bytes:  # type: ignore[override]
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Treadle API</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<link rel="stylesheet" href="{SWAGGER}/swagger-ui.css"></head>'
                f'<body><div id="swagger-container"></div>'
                f'<script src="{SWAGGER}/swagger-ui-bundle.js"></script>'
                f'<script src="{SWAGGER}/swagger-ui-standalone-preset.js"></script>'
                f'<script src="/static/swagger-init.js"></script></body></html>').encode()


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return request.method == "GET" and not path.startswith(("/api/", "/hooks/", "/schema", "/metrics", "/static/")) \
        and "text/html" in request.headers.get("accept", "")


def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error ({type(exc).__name__}); see the server log",
                          "INTERNAL_ERROR")


SECURITY = [ResponseHeader(name=k, value=v) for k, v in SECURITY_HEADERS.items()]


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Services.running(settings) as services:
            app.state.services = services
            yield

    env = SandboxedEnvironment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    register_template_helpers(env)
    handlers = [*API_ROUTES, *ADMIN_ROUTES, *TRIGGER_ROUTES, *VERSION_ROUTES, *PLAN_ROUTES, *METRICS_ROUTES, *NOTIFICATION_ROUTES, *SECRET_ROUTES, *BREAKER_ROUTES, *APPROVAL_ROUTES, *PAGE_ROUTES, *VERSION_PAGES, *BACKFILL_ROUTES, *BACKFILL_PAGES, *PLAN_PAGES, *TRIGGER_PAGES, *AUTH_PAGES, *AUDIT_PAGES]
    app = Litestar(
        # explicit OPTIONS first: Litestar 2's own lists one handler's methods only (web/allow.py)
        route_handlers=[*options_handlers(handlers), *handlers,
                        create_static_files_router(path="/static", directories=[HERE / "static"])],
        lifespan=[lifespan],
        template_config=TemplateConfig(instance=JinjaTemplateEngine.from_environment(env)),
        # /schema is the OpenAPI document itself (JSON); /schema/swagger a browsable view
        openapi_config=OpenAPIConfig(title="Treadle", version=__version__, path="/schema",
                                     render_plugins=[JsonRenderPlugin(path="/"), VendoredSwagger()]),
        middleware=[auth_middleware],
        before_request=refuse_unknown_query,  # a typo in a filter is a 400, not every row
        request_max_body_size=MAX_REQUEST_BODY_BYTES,
        request_class=TreadleRequest,  # JSON bodies: depth checked before decoding
        response_headers=SECURITY,
        exception_handlers={TreadleError: _treadle_error, HTTPException: _http_error, Exception: _internal_error},
        logging_config=LoggingConfig(configure_root_logger=False, log_exceptions="debug"),
        debug=False,
    )
    conform(app)  # /schema says exactly what the server accepts (web/openapi_conform.py)
    return app
