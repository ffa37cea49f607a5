"""Serving the route registry over HTTP: authentication, roles, rate limits, request
validation, the error shape and response encoding, for every plugin's routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web
from pydantic import BaseModel, ValidationError

from lightningd_py.config import split_host_port
from lightningd_py.errors import LndError, PluginError, StoreError
from lightningd_py.web import ApiError, ApiRequest, Route, role_allows

from .auth import RateLimiter, TokenAuthenticator

if TYPE_CHECKING:
    import structlog

__all__ = ["ApiServer", "call_lnd", "error_response", "lnd_api_error", "validation_api_error"]

T = TypeVar("T")

_json = msgspec.json.Encoder(decimal_format="string")
_JSON = "application/json"


def error_response(exc: ApiError) -> web.Response:
    """The one error shape: ``{"error": {"code", "message", "field"}}``."""
    return web.Response(
        body=_json.encode(exc.body()), status=exc.status, content_type=_JSON, headers=exc.headers or None
    )


_LND_STATUS = {
    "unreachable": (503, "lnd_unavailable", "LND cannot be reached right now"),
    "locked": (503, "lnd_locked", "LND's wallet is locked"),
    "starting": (503, "lnd_starting", "LND is starting"),
    "permission": (503, "lnd_permission", "LND refused the daemon's macaroon for this call"),
    "timeout": (504, "lnd_timeout", "LND did not answer in time"),
    "not_found": (404, "not_found", "LND does not know it"),
}


def lnd_api_error(exc: LndError, field: str | None = None) -> ApiError:
    """Map an LND failure to an API error: the caller's mistakes are 4xx, LND's
    unavailability 503. LND's own text is kept (it never holds credentials)."""
    if exc.kind == "invalid":
        return ApiError(400, "lnd_rejected", f"LND rejected the request: {exc.details}", field)
    if exc.kind in _LND_STATUS:
        status, code, message = _LND_STATUS[exc.kind]
        detail = f": {exc.details}" if exc.details and exc.kind in ("not_found", "timeout") else ""
        return ApiError(status, code, message + detail, field if exc.kind == "not_found" else None)
    # What is left is LND refusing the request in its current state ("peer is not online",
    # "channel is already closing"): the caller's to resolve, not a gateway failure.
    return ApiError(409, "lnd_refused", f"LND refused the request: {exc.details}", field)


async def call_lnd(call: Awaitable[T], field: str | None = None) -> T:
    """Await an LND call; the client's argument errors (``ValueError("field: why")``) and
    LND's refusals become API errors naming the field."""
    try:
        return await call
    except ValueError as exc:
        text = str(exc)
        name = text.split(":", 1)[0] if ":" in text else field
        raise ApiError(400, "invalid_field", text, name or field) from exc
    except LndError as exc:
        raise lnd_api_error(exc, field) from exc


def validation_api_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first problem of a pydantic validation error, naming the field."""
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    kind = err.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, "invalid_json", "the body is not valid JSON", "body")
    if not loc:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return ApiError(
                400, "invalid_body", "the body must be a JSON object", "body" if not prefix else prefix
            )
        return ApiError(400, "invalid_request", str(err.get("msg", "invalid request")), prefix or "body")
    field = f"{prefix}.{loc}" if prefix else loc
    if kind == "extra_forbidden":
        return ApiError(400, "unknown_field", f"{field}: unknown field", field)
    if kind == "missing":
        return ApiError(400, "missing_field", f"{field}: this field is required", field)
    msg = str(err.get("msg", "invalid value"))
    return ApiError(400, "invalid_field", f"{field}: {msg}", field)


@web.middleware
async def _errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Only what happens outside a route wrapper lands here (unknown path, wrong method).
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            err = ApiError(404, "not_found", f"no endpoint at {request.path}")
        elif exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            err = ApiError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        elif exc.status == 413:
            err = ApiError(413, "body_too_large", "the request body is too large", "body")
        else:
            err = ApiError(exc.status, "http_error", exc.reason or "request failed")
        return error_response(err)


class ApiServer:
    """Owns the aiohttp application and its listening socket."""

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        authenticator: TokenAuthenticator,
        limiter: RateLimiter,
        max_body_bytes: int,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.routes = list(routes)
        self.auth = authenticator
        self.limiter = limiter
        self.max_body = max_body_bytes
        self.log = log
        self._runner: web.AppRunner | None = None
        self.addresses: list[Any] = []

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_middleware], client_max_size=self.max_body)
        for route in self.routes:
            app.router.add_route(route.method, route.path, self._wrap(route))
        return app

    async def start(self, listen: str) -> None:
        """Bind the listening socket; raises PluginError naming the address on failure."""
        host, port = split_host_port(listen)
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PluginError(
                "http_api", f"plugins.http_api.listen: cannot listen on {listen}: {exc.strerror}"
            ) from exc
        self._runner = runner
        self.addresses = list(runner.addresses)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ one route

    def _wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        need = route.role
        group = route.group
        body_model = route.body
        query_model = route.query
        status = route.status
        handler = route.handler
        log = self.log

        async def endpoint(request: web.Request) -> web.StreamResponse:
            try:
                if need is None:
                    role = None
                    client = "addr:" + (request.remote or "unknown")
                else:
                    # Read through self: a config reload swaps tokens and limits.
                    match = self.auth.check(request.headers.get("Authorization"))
                    if match is None:
                        raise ApiError(
                            401,
                            "unauthorized",
                            "a valid API token is required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": 'Bearer realm="lightningd-py"'},
                        )
                    if not role_allows(match.role, need):
                        raise ApiError(
                            403,
                            "forbidden",
                            f"this endpoint needs the {need} role; this token has {match.role}",
                        )
                    role = match.role
                    client = "token:" + match.name
                limiter = self.limiter
                wait = limiter.hit(client, group, time.monotonic())
                if wait is not None:
                    raise ApiError(
                        429,
                        "rate_limited",
                        f"too many requests in the {group!r} group; retry after the Retry-After seconds",
                        headers={"Retry-After": limiter.retry_after(wait)},
                    )
                body = await self._body(request, body_model) if body_model is not None else None
                query = _query(request, query_model) if query_model is not None else None
                result = await handler(
                    ApiRequest(
                        raw=request,
                        body=body,
                        query=query,
                        path=dict(request.match_info),
                        role=role,
                        client=client,
                    )
                )
            except ApiError as exc:
                return error_response(exc)
            except LndError as exc:
                return error_response(lnd_api_error(exc))
            except StoreError as exc:
                log.error("database error in API request", path=request.path, error=str(exc))
                return error_response(ApiError(503, "database_unavailable", "the database is unavailable"))
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:
                log.exception("API handler failed", method=request.method, path=route.path)
                return error_response(
                    ApiError(500, "internal_error", "the request failed; see the daemon's log")
                )
            return _render(result, status)

        endpoint.__name__ = f"{route.method} {route.path}"
        return endpoint

    async def _body(self, request: web.Request, model: type[BaseModel]) -> BaseModel:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise ApiError(413, "body_too_large", f"the body exceeds {self.max_body} bytes", "body")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise ApiError(413, "body_too_large", f"the body exceeds {self.max_body} bytes", "body") from exc
        if not raw.strip():
            raise ApiError(400, "missing_body", "a JSON object body is required", "body")
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_api_error(exc) from exc


def _query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_api_error(exc, prefix="query") from exc


def _render(result: Any, status: int) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, BaseModel):
        body = result.__pydantic_serializer__.to_json(result)
    else:
        body = _json.encode(result)
    return web.Response(body=body, status=status, content_type=_JSON)
