"""Describing a route next to its handler, so a change to the handler and to its description is one change.

A handler class carries its path and operations with :func:`describe`; :mod:`s2s.web.openapi`
collects them from make_app's route table into GET /api/openapi.json. What an operation states
about a limit or a choice is written as a function of the running settings and catalog, so the
description is what this process enforces. The pieces below keep each description short.
"""

from __future__ import annotations

JSON = "application/json"
SCHEMAS = "#/components/schemas/"
COUNT = {"type": "integer", "minimum": 0}
NO_STORE = {"Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-store"}}}


def describe(path: str, *, schemas: dict | None = None, **operations):
    """Class decorator: the handler serves ``path`` (OpenAPI form, ``{jobId}``) with these operations by method.

    An operation is a dict, or a function of ``(settings, catalog)`` returning one. ``schemas`` are
    components only this handler's answers use. An operation tagged ``operator`` is put behind the
    operator token by the assembler, as :meth:`ApiHandler.require_operator` does.
    """
    def mark(handler: type) -> type:
        handler.openapi = (path, operations, schemas or {})
        return handler
    return mark


def operation(operation_id: str, tag: str, summary: str, responses: dict, **more) -> dict:
    """One operation; a response given as a string names a shared one (``"JobNotFound"``)."""
    return {"operationId": operation_id, "tags": [tag], "summary": summary, **more,
            "responses": {str(status): {"$ref": "#/components/responses/" + answer} if isinstance(answer, str)
                          else answer for status, answer in responses.items()}}


def ref(name: str) -> dict:
    return {"$ref": SCHEMAS + name}


def answer(schema: dict | str, description: str, *, headers: dict | None = None, links: dict | None = None,
           example: object = None) -> dict:
    """A JSON answer; ``schema`` may name a component."""
    media: dict = {"schema": ref(schema) if isinstance(schema, str) else schema}
    if example is not None:
        media["example"] = example
    out: dict = {"description": description, "content": {JSON: media}}
    if headers:
        out["headers"] = headers
    if links:
        out["links"] = links
    return out


def error(description: str, *codes: str, headers: dict | None = None) -> dict:
    """An error answer in the contract's shape, naming the exact codes it may carry."""
    return answer({"allOf": [ref("Error"), {"properties": {"code": {"enum": list(codes)}}}]}, description,
                  headers=headers)


def retry_after(*, required: bool) -> dict:
    return {"Retry-After": {"required": required, "description": "Seconds to wait before trying again.",
                            "schema": {"type": "integer", "minimum": 1}}}
