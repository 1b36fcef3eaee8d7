"""Request bodies the routes parse themselves (bounded, off the event loop when large), described in the OpenAPI
document all the same: each route's ``openapi_extra`` names a model, whose schema lands in the document's
components (:func:`add_components`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, Any] = {}


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    _register(model)
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}}}


def form_body(fields: dict[str, dict[str, Any]], required: list[str], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a multipart form (a file field: ``{"type": "string", "format": "binary"}``)."""
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": fields, "required": required}}}}}


def _register(model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        _COMPONENTS.setdefault(name, definition)
    _COMPONENTS[model.__name__] = schema


def add_components(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in _COMPONENTS.items():
        schemas.setdefault(name, schema)
    return document
