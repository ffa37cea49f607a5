"""The HTTP route contract shared by every plugin that adds endpoints.

Plugins describe endpoints with ``RouteRegistry.add`` from their
``ldp_register_routes`` hook; the http_api plugin serves them, applying authentication,
roles, rate limits, request validation, the error format and the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from aiohttp import web
    from pydantic import BaseModel

__all__ = ["ROLES", "ApiError", "ApiRequest", "Handler", "Role", "Route", "RouteRegistry"]

Role = Literal["admin", "invoice", "readonly"]
# Each role includes the ones after it: admin may do all that invoice may, and so on.
ROLES: tuple[Role, ...] = ("admin", "invoice", "readonly")


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"code", "message", "field"}}``.

    :param status: the HTTP status (4xx for the client's mistakes, 503 when a dependency
        such as LND or an exchange-rate provider is unavailable).
    :param code: a stable machine-readable code, e.g. ``"invalid_amount"``.
    :param message: a sentence for humans; never contains secrets.
    :param field: the request field at fault (``"amount_msat"``, ``"query.status"``), if any.
    :param headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a route handler receives.

    :ivar raw: the aiohttp request (headers, ``match_info``, the transport for streaming).
    :ivar body: the JSON body validated by the route's ``body`` model, or None.
    :ivar query: the query string validated by the route's ``query`` model, or None.
    :ivar path: path parameters (``match_info``) as a dict of strings.
    :ivar role: the caller's role, or None on a public route.
    :ivar client: the rate-limit identity of the caller (token id or address).
    """

    raw: web.Request
    body: Any
    query: Any
    path: dict[str, str]
    role: Role | None
    client: str


# A handler returns a pydantic model, a dict/list (sent as JSON with status 200), or an
# aiohttp StreamResponse/Response it built itself (streams, SVG, CSV).
Handler = Callable[[ApiRequest], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: Role | None
    group: str
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    tags: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    content_type: str = "application/json"
    owner: str = ""


class RouteRegistry:
    """Collects the routes every plugin declares."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._owner = ""

    def for_owner(self, owner: str) -> RouteRegistry:
        """A view of this registry that records ``owner`` on the routes added through it."""
        view = RouteRegistry.__new__(RouteRegistry)
        view.routes = self.routes
        view._owner = owner
        return view

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        role: Role | None,
        summary: str,
        group: str = "general",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        tags: tuple[str, ...] = (),
        responses: dict[int, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Declare an endpoint.

        :param method: ``"GET"``, ``"POST"``, ``"PUT"``, ``"DELETE"``.
        :param path: an aiohttp path under ``/v1``, e.g. ``"/v1/invoices/{payment_hash}"``.
        :param handler: ``async def handler(request: ApiRequest) -> ...``.
        :param role: the least role allowed (``"readonly"`` < ``"invoice"`` < ``"admin"``);
            None makes the route public.
        :param summary: one line for the OpenAPI document.
        :param group: the rate-limit group (``"general"``, ``"channels"``, ``"rebalance"``).
        :param body: pydantic model validating the JSON body (unknown fields are errors).
        :param query: pydantic model validating the query string.
        :param response: pydantic model describing (and serializing) the success response.
        :param status: the success status code.
        :param tags: OpenAPI tags.
        :param responses: extra documented statuses and their descriptions.
        :param content_type: the success media type when not JSON (``"image/svg+xml"``).
        """
        method = method.upper()
        for r in self.routes:
            if r.method == method and r.path == path:
                raise ValueError(
                    f"route {method} {path} is already registered by {r.owner or 'another plugin'}"
                )
        self.routes.append(
            Route(
                method=method,
                path=path,
                handler=handler,
                role=role,
                group=group,
                summary=summary,
                body=body,
                query=query,
                response=response,
                status=status,
                tags=tags,
                responses=dict(responses or {}),
                content_type=content_type,
                owner=self._owner,
            )
        )


def role_allows(have: Role, need: Role) -> bool:
    """Whether a caller with role ``have`` may call a route that needs ``need``."""
    return ROLES.index(have) <= ROLES.index(need)
