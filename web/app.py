"""`create_app(settings)`: the Litestar app serving the JSON API and the dashboard."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from runner import __version__
from runner.errors import ParamError, RunNotFound, TreadleError, WorkflowInvalid, WorkflowNotFound

from .api import API_ROUTES
from .pages import PAGE_ROUTES, register_template_helpers
from .services import Services, Settings

HERE = Path(__file__).parent
_STATUS = {WorkflowNotFound: 404, RunNotFound: 404, WorkflowInvalid: 409, ParamError: 400}


def error_response(request: Request, status: int, detail: str, code: str, extra: dict | None = None) -> Response:
    """The SPEC's JSON error form."""
    body = {"detail": detail, "error_code": code, "path": request.url.path,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), **(extra or {})}
    return Response(body, status_code=status, media_type="application/json")


def _treadle_error(request: Request, exc: TreadleError) -> Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    extra: dict = {}
    if isinstance(exc, ParamError):
        extra["errors"] = exc.errors
    if isinstance(exc, WorkflowInvalid):
        extra["errors"] = [str(p) for p in exc.problems]
    return error_response(request, status, str(exc), exc.error_code, extra)


def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 409: "CONFLICT",
            413: "TOO_LARGE", 422: "UNPROCESSABLE", 429: "TOO_MANY_REQUESTS"}.get(exc.status_code, "HTTP_ERROR")
    extra = {"errors": exc.extra} if isinstance(exc, ValidationException) and exc.extra else None
    if isinstance(exc, NotFoundException) and not request.url.path.startswith("/api"):
        code = "NOT_FOUND"
    return error_response(request, exc.status_code, str(exc.detail), code, extra)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Services.running(settings) as services:
            app.state.services = services
            yield

    env = SandboxedEnvironment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    register_template_helpers(env)
    return Litestar(
        route_handlers=[*API_ROUTES, *PAGE_ROUTES,
                        create_static_files_router(path="/static", directories=[HERE / "static"])],
        lifespan=[lifespan],
        template_config=TemplateConfig(instance=JinjaTemplateEngine.from_environment(env)),
        openapi_config=OpenAPIConfig(title="Treadle", version=__version__, path="/schema"),
        exception_handlers={TreadleError: _treadle_error, HTTPException: _http_error},
        logging_config=LoggingConfig(configure_root_logger=False, log_exceptions="debug"),
        debug=False,
    )
