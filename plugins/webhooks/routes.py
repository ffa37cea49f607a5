"""Admin HTTP endpoints of the webhooks plugin: endpoint health, the delivery log,
manual redelivery and test events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from lightningd_py.api import ApiError, ApiRequest, RouteRegistry

from .outbox import row_to_api

if TYPE_CHECKING:
    from .service import WebhookService

__all__ = ["public_url", "register_routes"]

_TAGS = ("webhooks",)
_COLUMNS = (
    "id, msg_id, endpoint, event_type, event_id, status, attempts, created_at, next_attempt_at, "
    "last_attempt_at, last_status_code, last_error, delivered_at"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeliveriesQuery(_Strict):
    status: Literal["pending", "delivered", "failed"] | None = None
    endpoint: str | None = Field(default=None, max_length=63)
    cursor: int | None = Field(default=None, ge=1, description="next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=500)


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str
    endpoint: str
    event_type: str
    event_id: int | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: float | None


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any] = Field(description="The JSON body sent: type, timestamp, data.")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: int | None = Field(description="Pass as cursor for older deliveries; null on the last page.")


class EndpointHealth(BaseModel):
    name: str
    url: str = Field(description="Scheme, host and path only (query strings may hold tokens).")
    events: list[str]
    enabled: bool
    # A disabled endpoint has no worker: the defaults describe it.
    success_rate: float | None = Field(None, description="Share of the last 100 attempts that got a 2xx.")
    recent_attempts: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    queue_depth: int = 0
    in_flight: int = 0


class EndpointList(BaseModel):
    endpoints: list[EndpointHealth]


class SendTestQuery(_Strict):
    wait: float = Field(
        default=5.0, ge=0, le=60, description="Seconds to wait for the first attempt's outcome."
    )


class SendTestResult(BaseModel):
    delivery: DeliveryOut


def public_url(url: str) -> str:
    """The URL without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def register_routes(service: WebhookService, router: RouteRegistry) -> None:
    """Declare the plugin's routes (admin role)."""

    async def list_endpoints(request: ApiRequest) -> EndpointList:
        out = []
        for ep in service.settings.endpoints:
            worker = service.workers.get(ep.name)
            health: dict[str, Any] = worker.health() if worker is not None else {"name": ep.name}
            health.update(url=public_url(ep.url), events=list(ep.events), enabled=worker is not None)
            out.append(EndpointHealth(**health))
        return EndpointList(endpoints=out)

    async def list_deliveries(request: ApiRequest) -> DeliveryPage:
        q: DeliveriesQuery = request.query
        where, params = [], []
        if q.status is not None:
            where.append("status = ?")
            params.append(q.status)
        if q.endpoint is not None:
            where.append("endpoint = ?")
            params.append(q.endpoint)
        if q.cursor is not None:
            where.append("id < ?")
            params.append(q.cursor)
        sql = f"SELECT {_COLUMNS} FROM webhooks_deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = await service.store.fetchall(sql, (*params, q.limit + 1))
        page = [DeliveryOut(**row_to_api(r)) for r in rows[: q.limit]]
        return DeliveryPage(deliveries=page, next_cursor=page[-1].id if len(rows) > q.limit else None)

    async def _fetch(delivery_id: int, with_body: bool = False) -> Any:
        cols = _COLUMNS + (", body" if with_body else "")
        row = await service.store.fetchone(
            f"SELECT {cols} FROM webhooks_deliveries WHERE id = ?", (delivery_id,)
        )
        if row is None:
            raise ApiError(
                404, "delivery_not_found", f"no delivery with id {delivery_id}", "path.delivery_id"
            )
        return row

    def _delivery_id(request: ApiRequest) -> int:
        raw = request.path.get("delivery_id", "")
        if not raw.isdigit():
            raise ApiError(
                400, "invalid_delivery_id", "delivery_id must be a positive integer", "path.delivery_id"
            )
        return int(raw)

    async def get_delivery(request: ApiRequest) -> DeliveryDetail:
        row = await _fetch(_delivery_id(request), with_body=True)
        return DeliveryDetail(**row_to_api(row), payload=msgspec.json.decode(bytes(row["body"])))

    async def redeliver(request: ApiRequest) -> DeliveryOut:
        delivery_id = _delivery_id(request)
        outcome = await service.redeliver(delivery_id)
        if outcome == "not_found":
            raise ApiError(
                404, "delivery_not_found", f"no delivery with id {delivery_id}", "path.delivery_id"
            )
        if outcome == "no_endpoint":
            raise ApiError(
                409,
                "endpoint_not_active",
                "the delivery's endpoint is not configured or is disabled",
                "path.delivery_id",
            )
        return DeliveryOut(**row_to_api(await _fetch(delivery_id)))

    async def send_test(request: ApiRequest) -> SendTestResult:
        name = request.path.get("name", "")
        if name not in service.workers:
            raise ApiError(404, "endpoint_not_found", f"no enabled endpoint named {name!r}", "path.name")
        q: SendTestQuery = request.query
        sent = await service.send_test(name, q.wait)
        await service.store.flush()
        return SendTestResult(delivery=DeliveryOut(**row_to_api(await _fetch(sent["id"]))))

    kw: dict[str, Any] = {"role": "admin", "tags": _TAGS}
    router.add(
        "GET",
        "/v1/webhooks/endpoints",
        list_endpoints,
        summary="Webhook endpoints and their health",
        response=EndpointList,
        **kw,
    )
    router.add(
        "GET",
        "/v1/webhooks/deliveries",
        list_deliveries,
        summary="Webhook deliveries, newest first (filter by status and endpoint)",
        query=DeliveriesQuery,
        response=DeliveryPage,
        **kw,
    )
    router.add(
        "GET",
        "/v1/webhooks/deliveries/{delivery_id}",
        get_delivery,
        summary="One webhook delivery with the payload sent",
        response=DeliveryDetail,
        responses={404: "No such delivery"},
        **kw,
    )
    router.add(
        "POST",
        "/v1/webhooks/deliveries/{delivery_id}/redeliver",
        redeliver,
        summary="Queue a delivered or failed delivery again (same webhook-id)",
        response=DeliveryOut,
        status=202,
        responses={404: "No such delivery", 409: "Its endpoint is not active"},
        **kw,
    )
    router.add(
        "POST",
        "/v1/webhooks/endpoints/{name}/test",
        send_test,
        summary="Send a webhook.test event to an endpoint and report the first attempt",
        query=SendTestQuery,
        response=SendTestResult,
        responses={404: "No such enabled endpoint"},
        **kw,
    )
