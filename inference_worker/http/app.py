"""The HTTP API as one FastAPI application over the worker's :class:`~inference_worker.service.Service`.

    app = create_app(service)          # served by uvicorn in the worker's event loop (server.py)

Routes: the original service's (``original.py``) and OpenAI's (``openai.py``); docs at ``/docs`` (Swagger UI with its
assets served from here: nothing comes from a CDN) and ``/openapi.json``. Middleware, outermost first: CORS (only
with HTTP_CORS_ORIGINS), the bearer token, the bound on requests in flight, the body bound (``guards.py``). Every
error, whatever raised it, is the one error body of :mod:`wire.http`; an unexpected exception is a 500 that says
nothing about the server.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from wire.errors import InternalError, NotFound, ProtocolError, ServiceError

from ..service import Service
from . import openai, original
from .guards import BearerAuth, BodyLimit, InFlightLimit
from .replies import error_reply
from .schemas import add_components

log = logging.getLogger(__name__)

DESCRIPTION = """Qwen3-VL with hot-swappable LoRA adapters, describing diagrams.

* **The original service's API**: `POST /infer` (multipart `file`) and `POST /inference` (multipart `image`) answer
  `{"description", "metadata"}`; diagram sources (.bpmn, .mmd, .dot, .puml, .svg) are drawn first.
* **OpenAI-compatible**: `POST /v1/chat/completions` (streamed or not), `GET /v1/models`, and vLLM's
  `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter`. `model` is the base model or an adapter.
* The same worker speaks a streaming WebSocket protocol on its other port (docs/protocol.md).

Errors: `{"error": {"message", "type", "param", "code", "retryable"}, "detail"}` with a stable `code`.
"""


def create_app(service: Service, ws_port: int | None = None) -> FastAPI:
    """``ws_port``: the WebSocket protocol's port, as ``GET /`` shows it (INFERENCE_PORT, or the one bound for 0)."""
    s = service.settings
    app = FastAPIOffline(title="inference-worker", version="0.1.0", description=DESCRIPTION,
                         static_url="/docs/assets", redoc_url=None)
    app.state.service = service
    app.state.ws_port = ws_port if ws_port is not None else s.port
    app.state.models = openai.Models(service)
    app.state.drawing = original.drawing_pool()  # shut down by server.py
    app.include_router(original.router)
    app.include_router(openai.router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=s.max_message_bytes)
    app.add_middleware(InFlightLimit, most=s.max_connections)
    token = s.auth_token.get_secret_value() if s.auth_token is not None else None
    app.add_middleware(BearerAuth, token=token)
    if s.http_cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.http_cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        add_components(document)
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "INFERENCE_AUTH_TOKEN, when it is set"}}
        document["security"] = [{"bearer": []}, {}]
        app.openapi_schema = document
    return app.openapi_schema


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.code == "internal_error":
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_reply(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: ServiceError = NotFound(f"no such path: {request.url.path[:200]} (GET /docs lists them)")
    else:
        error = ProtocolError(str(exc.detail))
    return error_reply(error, exc.status_code, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return error_reply(ProtocolError(f"invalid request: {str(exc)[:500]}"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_reply(InternalError(f"the server failed on this request ({type(exc).__name__})"))
