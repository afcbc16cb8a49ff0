"""The HTTP server: `create_app(settings)` builds the FastAPI app that `tunesmith serve` runs.

It speaks OpenAI's API (files, fine-tuning jobs, models, chat and text completions), so the
official `openai` package drives it with only `base_url` and `api_key` changed, plus
tunesmith's own routes under /v1/tunesmith; one router per resource in `routes/`, the
dependencies they share in `deps.py`. Every request needs an API key (`tunesmith keys create`);
a key sees only its own project's files, jobs and models, an admin key sees all.
Errors are OpenAI's error objects: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import sys
import traceback
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import TunesmithError
from tunesmith.jobs import store
from tunesmith.serve import gate
from tunesmith.serve.deps import APIError, Settings, error_body
from tunesmith.serve.limits import BodyLimit
from tunesmith.serve.routes import (
    completions,
    files,
    jobs,
    models,
    platform,
    tuned_models,
)

# Mounted under /v1 in this order (a route matches in the order routers are included).
ROUTERS = [files.router, jobs.router, models.router, completions.router, platform.router, tuned_models.router]


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app: OpenAI-compatible routes under /v1, with its OpenAPI spec at /openapi.json."""
    settings.data_dir = Path(settings.data_dir)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        gate.close_gate(app.state)  # a check in progress is abandoned, not waited for
        if app.state.engine is not None:
            app.state.engine.close(timeout=app.state.settings.shutdown_s)

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, and nothing on the
    # API's origin may run third-party code. The spec stays at /openapi.json for any viewer.
    app = FastAPI(title="tunesmith", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Fine-tuning as a service, compatible with OpenAI's files, fine-tuning, models and chat APIs.")
    app.state.settings = settings
    app.state.sessions = store.connect(settings.url)
    app.state.engine = None  # the inference engine loads on the first completion request

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(TunesmithError)
    async def user_error(_request, exc: TunesmithError):
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        return JSONResponse(error_body(*_validation_message(exc.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        message = f"Unknown route {request.method} {request.url.path}." if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(message, code="unknown_url" if exc.status_code == 404 else None),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)  # the details go to the server log, not the client
        # Starlette answers this one outside every middleware, so it sets the security headers itself.
        return JSONResponse(error_body(f"The server hit an internal error ({type(exc).__name__}); its log has the details.",
                                       type="server_error"), status_code=500, headers=SECURITY_HEADERS)

    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    _add_ui(app)
    app.openapi = lambda: _openapi_with_errors(app)
    # Body sizes are checked as the body streams in, before any route (or Starlette's multipart parser) reads it.
    app.add_middleware(BodyLimit, settings=settings)
    # Added last, so it is the outermost middleware and every answer, another middleware's included, carries it.
    app.add_middleware(SecurityHeaders)
    return app


UI_DIR = Path(__file__).parent / "ui"


def _add_ui(app: FastAPI) -> None:
    """The web UI at `/`: static files shipped in the package (no CDN), talking to the same
    /v1 API with the key the user signs in with."""
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(UI_DIR / "index.html")


def _validation_message(errors: list[dict]) -> tuple[str, str, str | None]:
    """One sentence for the first thing wrong with a request, naming the parameter."""
    error = errors[0]
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form")]
    param = ".".join(loc) or None
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", "invalid_request_error", param
    if error.get("type") in ("json_invalid", "model_attributes_type") or not loc:
        return "The request body is not valid JSON; send a JSON object.", "invalid_request_error", param
    return f"Invalid value for '{param}': {error.get('msg', 'invalid')}.", "invalid_request_error", param


# --------------------------------------------------------------------------- exposure: headers and the spec

# The web UI is same-origin JavaScript and CSS only (no inline script); it sets a few `style`
# attributes, shows a run's report (inline CSS, data: PNGs) in a sandboxed iframe from a blob:
# URL, which inherits this policy, and downloads files through blob: links.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "frame-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'self'",
])
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # an uploaded file is never run as a script or a page
    "X-Frame-Options": "SAMEORIGIN",  # the UI frames reports from its own origin; nobody else frames us
    "Referrer-Policy": "no-referrer",  # signed download links carry their signature in the URL
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response. Plain ASGI rather than
    BaseHTTPMiddleware, which would buffer event streams and hide client disconnects."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ErrorDetail(BaseModel):
    message: str
    """One sentence naming what to fix."""
    type: str
    """invalid_request_error, authentication_error, rate_limit_error, server_error, ..."""
    param: str | None = None
    """The request parameter at fault, if one is."""
    code: str | None = None
    """A machine-readable reason, e.g. model_not_found."""


class ErrorResponse(BaseModel):
    """OpenAI's error object: the body of every answer that is not a success."""

    error: ErrorDetail


# What any operation may answer besides success. Validation errors are 400, as OpenAI's are
# (the RequestValidationError handler), so FastAPI's 422 is never sent and is not documented.
ERROR_STATUSES = {
    400: "Invalid request: a parameter is missing, of the wrong type or out of range; the message names it.",
    401: "Missing or incorrect API key.",
    404: "No such object in the key's project (or no such route).",
    413: "The request body is larger than the server's limit (`max_body_mb`; `--max-upload-mb` for files).",
    500: "Internal error; the server log has the details, the client gets none.",
    503: "The server is shutting down; retry later or on another instance.",
}
# Statuses only some operations answer: (method, path) of each.
OPERATION_STATUSES: dict[int, tuple[str, list[tuple[str, str]]]] = {
    403: ("Not allowed: a base model cannot be deleted; a download link is invalid or expired.",
          [("delete", "/v1/models/{model_id}"), ("get", "/v1/tunesmith/models/download")]),
    409: ("The job changed status meanwhile; retrieve it and try again.",
          [("post", f"/v1/fine_tuning/jobs/{{job_id}}/{verb}") for verb in ("cancel", "pause", "resume")]),
    429: ("Too many generation requests: this key's concurrency limit or the server's queue is full; "
          "retry after the `Retry-After` header's seconds.",
          [("post", "/v1/chat/completions"), ("post", "/v1/completions")]),
}


def _openapi_with_errors(app: FastAPI) -> dict:
    """FastAPI's spec with the error answers the server really gives: OpenAI's error object for
    each status in ERROR_STATUSES and OPERATION_STATUSES, no 422, and the bearer key scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                "description": "An API key from `tunesmith keys create`."}}
    spec["security"] = [{"apiKey": []}]
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses = dict(ERROR_STATUSES)
            statuses |= {status: text for status, (text, where) in OPERATION_STATUSES.items() if (method, path) in where}
            for status, text in sorted(statuses.items()):
                responses.setdefault(str(status), {"description": text, "content": error_content})
            if "429" in responses:
                responses["429"].setdefault("headers", {"Retry-After": {
                    "description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}})
    if "get" in (download := spec["paths"].get("/v1/tunesmith/models/download", {})):
        download["get"]["security"] = [{"apiKey": []}, {}]  # a signed link works without a key
    for name in ("HTTPValidationError", "ValidationError"):  # only the 422 answers used them
        schemas.pop(name, None)
    app.openapi_schema = spec
    return spec
