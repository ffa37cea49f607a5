"""The OpenAPI 3.1 document, generated from the route registry and the routes' pydantic
models, so it describes exactly what is served."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lightningd_py.web import Route

__all__ = ["ErrorBody", "build_openapi"]

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: ErrorDetail


_ERROR_TEXT = {
    400: "Invalid input; `error.field` names the field at fault",
    401: "Missing or invalid API token",
    403: "The token's role may not call this endpoint",
    404: "Not found",
    413: "Request body too large",
    409: "LND refused the request in its current state (its message says why)",
    422: "The request conflicts with an earlier one (e.g. an Idempotency-Key reused with another body)",
    429: "Rate limit exceeded; see Retry-After",
    503: "A dependency (LND, the database, a plugin, an exchange-rate provider) is unavailable",
    504: "LND did not answer in time",
}


def build_openapi(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    keys: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for r in routes:
        if r.body is not None:
            keys.append((r.body, "validation"))
        if r.query is not None:
            keys.append((r.query, "validation"))
        if r.response is not None:
            keys.append((r.response, "serialization"))
    seen: set[tuple[type[BaseModel], Any]] = set()
    unique = [k for k in keys if not (k in seen or seen.add(k))]
    refs, top = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def resolve(model: type[BaseModel], mode: str) -> dict[str, Any]:
        target = refs[(model, mode)]
        if "$ref" in target:
            return schemas[target["$ref"].rsplit("/", 1)[-1]]
        return target

    error_ref = ref(ErrorBody, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", r.path)
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": _operation_id(r),
            "tags": list(r.tags) or [r.owner or "api"],
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in _PARAM.findall(r.path)
        ]
        if r.query is not None:
            qschema = resolve(r.query, "validation")
            required = set(qschema.get("required", ()))
            for name, prop in qschema.get("properties", {}).items():
                prop = _absent_not_null(prop)
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                }
                if prop.get("description"):
                    param["description"] = prop["description"]
                params.append(param)
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(r.body, "validation")}},
            }
        if r.role is None:
            op["security"] = []
        else:
            op["description"] = f"Needs the `{r.role}` role (or higher). Rate-limit group: `{r.group}`."
        ok: dict[str, Any] = {"description": "Success", "content": {}}
        # content_type may list several media types ("text/csv, application/json").
        for media in (m.strip() for m in r.content_type.split(",")):
            if media == "application/json":
                schema = ref(r.response, "serialization") if r.response else {}
            else:
                schema = {"type": "string"}
            ok["content"][media] = {"schema": schema}
        responses: dict[str, Any] = {str(r.status): ok}
        codes = {400, 429, 503}
        if r.role is not None:
            codes |= {401, 403}
        if r.body is not None:
            codes |= {413}
        codes |= set(r.responses)
        for code in sorted(codes):
            text = r.responses.get(code) or _ERROR_TEXT.get(code, "Error")
            responses[str(code)] = {
                "description": text,
                "content": {"application/json": {"schema": error_ref}},
            }
        op["responses"] = responses
        paths.setdefault(path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _absent_not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop ``null`` from ``anyOf``."""
    options = prop.get("anyOf")
    if not options:
        return prop
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) == len(options):
        return prop
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _operation_id(r: Route) -> str:
    words = re.sub(r"[{}:]", "", r.path.removeprefix("/v1/")).replace("/", "_").replace("-", "_")
    return f"{r.method.lower()}_{words}"
