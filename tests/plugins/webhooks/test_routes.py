"""The admin routes, called through the route contract (lightningd_py.web)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightningd_py.plugins.webhooks.routes import DeliveriesQuery, SendTestQuery

from lightningd_py.events import InvoiceSettled, PaymentFailed
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

from .conftest import Received, RunningDaemon, endpoint, run_plugin

pytestmark = pytest.mark.anyio


def routes(d: RunningDaemon) -> dict[tuple[str, str], Any]:
    registry = RouteRegistry()
    d.host.hooks.each_sync("ldp_register_routes", router=registry)
    assert all(r.role == "admin" for r in registry.routes)
    return {(r.method, r.path): r for r in registry.routes}


async def call(route: Any, *, query: Any = None, path: dict[str, str] | None = None) -> Any:
    request = ApiRequest(raw=None, body=None, query=query, path=path or {}, role="admin", client="test")  # type: ignore[arg-type]
    return await route.handler(request)


async def test_list_redeliver_test_and_health(tmp_path: Path, receivers: Any) -> None:
    good, bad = await receivers(), await receivers()

    async def broken(item: Received) -> tuple[int, dict[str, str]]:
        return 500, {}

    bad.behaviour = broken
    secret_url = good.url + "?token=topsecret"
    eps = [
        endpoint("good", good, ["payment.*"]) | {"url": secret_url},
        endpoint("bad", bad, ["payment.*"]),
        endpoint("off", good, ["*"], enabled=False),
    ]
    table = {"endpoints": eps, "retry_schedule": [0, 0.05]}
    async with run_plugin(tmp_path, table) as d:
        r = routes(d)
        await d.append(
            [InvoiceSettled(payment_hash=f"{i:064x}") for i in range(5)] + [PaymentFailed(payment_hash="ff")]
        )
        await good.wait_for(6)
        await d.settled()

        listing = await call(r[("GET", "/v1/webhooks/endpoints")])
        by_name = {e.name: e for e in listing.endpoints}
        assert by_name["good"].success_rate == 1.0 and by_name["good"].queue_depth == 0
        assert by_name["good"].url == good.url  # the token in the query string is not shown
        assert by_name["bad"].success_rate == 0.0 and by_name["bad"].last_error == "HTTP 500"
        assert by_name["off"].enabled is False
        assert "topsecret" not in listing.model_dump_json()
        assert "whsec_" not in listing.model_dump_json()

        failed = await call(r[("GET", "/v1/webhooks/deliveries")], query=DeliveriesQuery(status="failed"))
        assert len(failed.deliveries) == 6 and {x.endpoint for x in failed.deliveries} == {"bad"}
        assert all(x.attempts == 2 for x in failed.deliveries)

        # Cursor pagination walks every delivery once, newest first.
        seen, cursor = [], None
        while True:
            page = await call(
                r[("GET", "/v1/webhooks/deliveries")], query=DeliveriesQuery(limit=5, cursor=cursor)
            )
            seen += [x.id for x in page.deliveries]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == 12

        one = failed.deliveries[0]
        detail = await call(
            r[("GET", "/v1/webhooks/deliveries/{delivery_id}")], path={"delivery_id": str(one.id)}
        )
        assert detail.payload["type"] in ("payment.confirmed", "payment.failed")

        bad.behaviour = None
        again = await call(
            r[("POST", "/v1/webhooks/deliveries/{delivery_id}/redeliver")], path={"delivery_id": str(one.id)}
        )
        assert again.status == "pending" and again.attempts == 0
        (item,) = await bad.wait_for(1)
        assert item.headers["webhook-id"] == one.webhook_id
        await d.settled()

        result = await call(
            r[("POST", "/v1/webhooks/endpoints/{name}/test")],
            query=SendTestQuery(wait=5),
            path={"name": "good"},
        )
        assert result.delivery.status == "delivered" and result.delivery.event_type == "webhook.test"

        with pytest.raises(ApiError) as info:
            await call(
                r[("POST", "/v1/webhooks/endpoints/{name}/test")], query=SendTestQuery(), path={"name": "off"}
            )
        assert info.value.status == 404
        with pytest.raises(ApiError) as info:
            await call(r[("GET", "/v1/webhooks/deliveries/{delivery_id}")], path={"delivery_id": "999999"})
        assert info.value.status == 404
        with pytest.raises(ApiError) as info:
            await call(
                r[("POST", "/v1/webhooks/deliveries/{delivery_id}/redeliver")], path={"delivery_id": "x"}
            )
        assert info.value.status == 400 and info.value.field == "path.delivery_id"
