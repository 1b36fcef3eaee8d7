"""The original VLM service's API, field for field, on the request front: ``POST /infer`` (multipart ``file``),
``POST /inference`` (multipart ``image``, the migration plan's backend), ``GET /health``, ``GET /`` and its JSON
counters (``GET /stats``; ``/metrics`` stays Prometheus text).

A diagram source (``.bpmn``, ``.mmd``, ``.dot``, ``.puml``, ``.svg``; by file name) is drawn by the ``diagrams``
package first, then described; without its renderers it is refused with 415 naming ``make renderers``. One deadline,
INFER_TIMEOUT_S (25 s, the plan's client timeout), covers drawing and generation: past it the generation is stopped
in the engine and the reply is 504.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from wire import protocol as p
from wire.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidDiagram,
    InvalidImage,
    ProtocolError,
    RendererMissing,
    RequestTooLarge,
)

from ..events import AdapterHandle, Completed, Failed
from ..images import SUPPORTED_FORMATS, sniff_format
from ..metrics import CONTENT_TYPE
from ..service import Service
from .replies import json_reply
from .runs import ClientGone, admit, merged, unless_disconnected
from .schemas import form_body

log = logging.getLogger(__name__)
router = APIRouter(tags=["The original service"])

_FIELDS = {"prompt": str, "adapter": str, "max_tokens": int, "temperature": float, "seed": int}
_MAX_FORM_FIELDS = 16  # the form has at most six parts; more is not a client of this API


def _form_doc(file_field: str) -> dict[str, Any]:
    fields: dict[str, dict[str, Any]] = {
        file_field: {"type": "string", "format": "binary",
                     "description": "A PNG, JPEG or WebP picture, or a diagram source (.bpmn, .mmd, .dot, .puml, "
                                    ".svg: drawn first)"},
        "prompt": {"type": "string", "description": "Default: INFER_PROMPT (the diagram-description prompt)"},
        "adapter": {"type": "string", "description": "An adapter reference; default: the base model (or "
                                                     "INFERENCE_DEFAULT_ADAPTER)"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "description": "0: greedy"},
        "seed": {"type": "integer", "minimum": 0},
    }
    return form_body(fields, [file_field], "multipart/form-data")


@dataclass
class _Form:
    data: bytes
    filename: str | None
    fields: dict[str, Any]


@dataclass
class _Picture:
    b64: str
    size: tuple[int, int]
    diagram: dict[str, Any] | None


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def drawing_pool() -> ThreadPoolExecutor:
    """The threads that draw diagram sources: as many as the renderers take at once (DIAGRAM_MAX_CONCURRENT)."""
    try:
        from diagrams import DiagramSettings

        threads = DiagramSettings().max_concurrent
    except ImportError:  # no renderers in this venv: nothing will be drawn
        threads = 1
    return ThreadPoolExecutor(threads, thread_name_prefix="draw")


@router.post("/infer", summary="Describe a diagram (multipart field `file`)", openapi_extra=_form_doc("file"))
async def infer(request: Request) -> Response:
    return await _describe(request, "file")


@router.post("/inference", summary="Describe a diagram (multipart field `image`: the migration plan's backend)",
             openapi_extra=_form_doc("image"))
async def inference(request: Request) -> Response:
    return await _describe(request, "image")


async def _describe(request: Request, file_field: str) -> Response:
    started = time.perf_counter()
    service = _service(request)
    s = service.settings
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ProtocolError(f"send multipart/form-data with the picture in the field {file_field!r}",
                            param=file_field)
    body = await request.body()
    form = await asyncio.to_thread(_parse_form, body, content_type, file_field)
    del body
    deadline = started + s.infer_timeout_s
    kind = _diagram_kind(form.filename)
    # A picture is checked on a thread of the loop's pool (milliseconds); a diagram source is drawn on the drawing
    # pool (DIAGRAM_MAX_CONCURRENT threads, up to DIAGRAM_TIMEOUT_S each), so that drawings waiting for a renderer
    # never hold the threads that decode every request's images. A client that leaves meanwhile is not drawn for.
    loop = asyncio.get_running_loop()
    pool = request.app.state.drawing if kind is not None else None
    work = loop.run_in_executor(pool, _picture, form.data, form.filename, kind)
    try:
        picture = await unless_disconnected(
            request, asyncio.wait_for(work, timeout=max(deadline - time.perf_counter(), 0)))
    except TimeoutError:
        raise DeadlineExceeded(f"drawing the diagram took longer than INFER_TIMEOUT_S={s.infer_timeout_s:g}s") \
            from None
    except ClientGone:
        return Response(status_code=499)
    fields = form.fields
    prompt = fields.get("prompt") or s.infer_prompt
    content = [{"type": "image", "image": picture.b64}, {"type": "text", "text": prompt}]
    data: dict[str, Any] = {"type": "generate", "messages": [{"role": "user", "content": content}]}
    if s.infer_system_prompt:
        data["system_prompt"] = s.infer_system_prompt
    for key in ("max_tokens", "temperature", "seed"):
        if key in fields:
            data[key] = fields[key]
    if "adapter" in fields:
        data["adapter"] = fields["adapter"]
    try:
        message = p.Generate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else None
        param = {"system_prompt": None, "messages": "prompt"}.get(name, name) if name else None
        raise ProtocolError(f"{param or 'form'}: {err['msg']}", param=param) from None
    default = service.default_adapter
    remaining = deadline - time.perf_counter()
    streams = await admit(service, [message], request_id=f"infer-{uuid.uuid4().hex}",
                          adapter=AdapterHandle(default.ref, default.key) if default else None,
                          timeout=(remaining, f"INFER_TIMEOUT_S={s.infer_timeout_s:g}s"))
    try:
        end = await unless_disconnected(request, _end_of(merged(streams)))
    except ClientGone:
        return Response(status_code=499)
    info = service.engine.info if service.engine is not None else None
    t = end.timings
    return json_reply({
        "description": end.content,
        "metadata": {
            "inference_time": round(time.perf_counter() - started, 3),
            "generation_time": round((t.total_ms - t.queue_ms) / 1000, 3),
            "queue_time": round(t.queue_ms / 1000, 3),
            "time_to_first_token": round(t.ttft_ms / 1000, 3) if t.ttft_ms is not None else None,
            "tokens_per_second": t.tokens_per_s,
            "image_size": list(picture.size),
            "model": service.public_model_name,
            "device": info.device if info else None,
            "adapter": end.adapter,
            "usage": {"prompt_tokens": end.usage.prompt_tokens, "completion_tokens": end.usage.completion_tokens,
                      "total_tokens": end.usage.prompt_tokens + end.usage.completion_tokens},
            "finish_reason": end.finish_reason,
            "seed": end.seed,
            "diagram": picture.diagram,
        },
    })


async def _end_of(events: Any) -> Completed:
    async with contextlib.aclosing(events):
        async for _, event in events:
            if isinstance(event, Completed):
                return event
            if isinstance(event, Failed):
                raise event.error
    raise InternalError("the request ended without a result")


def _parse_form(body: bytes, content_type: str, file_field: str) -> _Form:
    """The multipart body (already bounded by MAX_MESSAGE_BYTES), parsed with python-multipart off the event loop:
    one file, the known fields, nothing else."""
    from python_multipart import FormParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ProtocolError("the multipart/form-data content type has no boundary")
    files: list[Any] = []
    fields: list[Any] = []

    def into(parts: list[Any]) -> Callable[[Any], None]:
        def on_part(part: Any) -> None:
            parts.append(part)
            if len(fields) + len(files) > _MAX_FORM_FIELDS:
                raise ProtocolError(f"the form has more than {_MAX_FORM_FIELDS} parts")
        return on_part

    # Everything stays in memory (the body is bounded already): nothing is written to disk.
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "MAX_BODY_SIZE": len(body) + 1}
    parser = FormParser("multipart/form-data", into(fields), into(files), boundary=boundary, config=config)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ProtocolError(f"the multipart body is malformed: {exc}") from None
    values: dict[str, Any] = {}
    for field in fields:
        name = (field.field_name or b"").decode("utf-8", "replace")
        if name == file_field:
            raise ProtocolError(f"{file_field!r} must be a file part (with a filename)", param=file_field)
        if name not in _FIELDS:
            raise ProtocolError(f"unknown form field {name[:64]!r}; known: {file_field}, {', '.join(_FIELDS)}",
                                param=name[:64])
        try:
            raw = (field.value or b"").decode("utf-8", "strict")
            values[name] = _FIELDS[name](raw)
        except UnicodeDecodeError:
            raise ProtocolError(f"{name} is not UTF-8 text", param=name) from None
        except ValueError:
            raise ProtocolError(f"{name} must be {_FIELDS[name].__name__}, got {raw[:64]!r}", param=name) from None
    picked = [f for f in files if (f.field_name or b"").decode("utf-8", "replace") == file_field]
    others = [f for f in files if f not in picked]
    if others:
        name = (others[0].field_name or b"").decode("utf-8", "replace")[:64]
        raise ProtocolError(f"unknown file field {name!r}: send the picture as {file_field!r}", param=name)
    if len(picked) != 1:
        raise ProtocolError(f"send exactly one file in the field {file_field!r}", param=file_field)
    file = picked[0]
    file.file_object.seek(0)
    data = file.file_object.read()
    if not data:
        raise InvalidImage(f"the file in {file_field!r} is empty")
    filename = file.file_name.decode("utf-8", "replace") if file.file_name else None
    return _Form(data, filename, values)


def _picture(data: bytes, filename: str | None, kind: Any) -> _Picture:
    """The uploaded picture as the model gets it (blocking): an image as is, a diagram source drawn first."""
    diagram = None
    if kind is not None:
        data, diagram = _draw(data, filename, kind)
    fmt = sniff_format(data)
    if fmt is None or fmt not in SUPPORTED_FORMATS:
        raise InvalidImage("the file is not a PNG, JPEG or WebP image, nor a diagram source named .bpmn, .mmd, "
                           ".mermaid, .dot, .gv, .puml, .plantuml or .svg")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:  # the header only: the request front decodes it
            size = image.size
    except Exception:
        size = (0, 0)  # the request front refuses it with the reason
    return _Picture(base64.b64encode(data).decode("ascii"), size, diagram)


def _diagram_kind(filename: str | None) -> Any:
    """The kind of diagram source the file name says (None: a picture), or RendererMissing without ``diagrams``."""
    if not filename:
        return None
    try:
        from diagrams import kind_of
    except ImportError:  # an engine venv without the diagrams package's dependencies (lxml, playwright)
        suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if suffix in ("bpmn", "mmd", "mermaid", "dot", "gv", "puml", "plantuml", "svg"):
            raise RendererMissing(f"{filename.rsplit('/', 1)[-1][:64]!r} is a diagram source, and this worker has "
                                  "no renderers: install them with `make renderers`, or send a PNG") from None
        return None
    return kind_of(filename)


def _draw(source: bytes, filename: str | None, kind: Any) -> tuple[bytes, dict[str, Any]]:
    from diagrams import DiagramError, default_renderer
    from diagrams.errors import RendererMissing as Missing
    from diagrams.errors import SourceTooLarge

    renderer = default_renderer()
    missing = renderer.missing(kind)
    if missing is not None:
        log.warning("a %s source was sent to /infer; %s", kind.label, missing)
        raise RendererMissing(f"{kind.label} sources need renderers that are not installed on this worker: "
                              "install them with `make renderers`, or send a PNG")
    try:
        rendered = renderer.render(source, name=filename, kind=kind)
    except Missing:
        raise RendererMissing(f"{kind.label} sources need renderers that are not installed on this worker: "
                              "install them with `make renderers`, or send a PNG") from None
    except SourceTooLarge as exc:
        raise RequestTooLarge(str(exc)) from None
    except DiagramError as exc:
        raise InvalidDiagram(str(exc)) from None
    return rendered.png, {"kind": str(kind), "renderer": rendered.renderer, "width": rendered.width,
                          "height": rendered.height, "render_ms": round(rendered.elapsed_ms, 1)}


# ---- service info, health and counters -------------------------------------------------------------------------------
@router.get("/health", summary="Liveness, in the original service's fields (200 unless the model failed to load)")
async def health(request: Request) -> Response:
    service = _service(request)
    h = service.health()
    loaded = service.engine is not None
    status = "unhealthy" if service.load_error else ("draining" if service.draining else
                                                     ("healthy" if service.ready else "loading"))
    return json_reply({**h, "status": status, "model_loaded": loaded, "processor_loaded": loaded,
                       "model_load_time": h["model_load_seconds"]}, 500 if service.load_error else 200)


@router.get("/ready", summary="Readiness: 200 once the model is loaded, 503 while loading or draining")
async def ready(request: Request) -> Response:
    service = _service(request)
    return json_reply(service.health(), 200 if service.serving else 503)


@router.get("/", summary="What this service is, and where its endpoints are")
async def root(request: Request) -> Response:
    service = _service(request)
    s = service.settings
    return json_reply({
        "service": "inference-worker",
        "description": "Qwen3-VL with hot-swappable LoRA adapters: describes diagrams",
        "model": service.public_model_name,
        "engine": s.engine,
        "ready": service.ready,
        "endpoints": {
            "infer": "POST /infer (multipart: file, prompt, adapter, max_tokens, temperature, seed)",
            "inference": "POST /inference (multipart: image, ...)",
            "chat": "POST /v1/chat/completions (OpenAI-compatible)",
            "models": "GET /v1/models",
            "adapters": "POST /v1/load_lora_adapter, /v1/unload_lora_adapter",
            "health": "GET /health", "ready": "GET /ready", "stats": "GET /stats (JSON counters)",
            "metrics": "GET /metrics (Prometheus text)", "docs": "GET /docs (OpenAPI: /openapi.json)",
            "websocket": f"ws://<host>:{request.app.state.ws_port}/ (the streaming protocol)",
        },
    })


@router.get("/stats", summary="The original service's JSON counters (Prometheus text is at /metrics)")
async def stats(request: Request) -> Response:
    service = _service(request)
    info = service.engine.info if service.engine is not None else None
    count, seconds = service.completed, service.completed_seconds
    gpu = None
    if info is not None and info.device == "cuda" and service.settings.engine == "transformers":
        import torch

        gpu = {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}
    return json_reply({
        "inference_count": count,
        "total_inference_time": round(seconds, 3),
        "avg_inference_time": round(seconds / count, 3) if count else 0.0,
        "model_load_time": round(info.load_seconds, 3) if info else None,
        "gpu_memory": gpu,
        "running": service.admission.running,
        "queued": service.admission.queued,
        "uptime_seconds": round(time.time() - service.started_at, 1),
    })


@router.get("/metrics", summary="Prometheus metrics (text format), the same as on the WebSocket port")
async def metrics(request: Request) -> Response:
    return Response(_service(request).render_metrics(), media_type=CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})

