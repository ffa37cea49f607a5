"""The API server over real HTTP with test routes: auth and roles, rate limits, request
validation, the error shape, body limits, and the OpenAPI document."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import structlog
from lightningd_py.plugins.http_api.auth import RateLimiter, TokenAuthenticator
from lightningd_py.plugins.http_api.openapi import build_openapi
from lightningd_py.plugins.http_api.server import ApiServer
from lightningd_py.plugins.http_api.settings import ApiToken, HttpApiSettings, parse_rate_limit
from pydantic import BaseModel, ConfigDict, Field

from lightningd_py.demo import free_port
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

pytestmark = pytest.mark.anyio

TOKENS = {"admin": "tok-admin", "invoice": "tok-invoice", "readonly": "tok-readonly"}


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_msat: int = Field(ge=1, le=1000)
    note: str = ""
    price: Decimal | None = None


class ThingQuery(BaseModel):
    limit: int = Field(10, ge=1, le=100)


class ThingOut(BaseModel):
    amount_msat: int
    role: str | None


def registry() -> RouteRegistry:
    r = RouteRegistry()

    async def public(req: ApiRequest) -> dict[str, Any]:
        return {"ok": True}

    async def read(req: ApiRequest) -> dict[str, Any]:
        return {"limit": req.query.limit, "role": req.role}

    async def create(req: ApiRequest) -> ThingOut:
        return ThingOut(amount_msat=req.body.amount_msat, role=req.role)

    async def missing(req: ApiRequest) -> None:
        raise ApiError(404, "thing_not_found", "no such thing", "thing_id")

    async def broken(req: ApiRequest) -> None:
        raise RuntimeError("secret internals")

    r.add("GET", "/v1/public", public, role=None, summary="public", group="public")
    r.add("GET", "/v1/things", read, role="readonly", summary="list", query=ThingQuery)
    r.add(
        "POST",
        "/v1/things",
        create,
        role="invoice",
        summary="create",
        body=Thing,
        response=ThingOut,
        status=201,
    )
    r.add("GET", "/v1/things/{thing_id}", missing, role="readonly", summary="get")
    r.add("DELETE", "/v1/things/{thing_id}", broken, role="admin", summary="delete", group="channels")
    return r


@pytest.fixture
async def api() -> AsyncIterator[Callable[..., Any]]:
    servers: list[ApiServer] = []

    async def start(limits: dict[str, str] | None = None) -> str:
        tokens = [
            ApiToken(name=role, role=role, sha256=hashlib.sha256(tok.encode()).hexdigest())  # type: ignore[arg-type]
            for role, tok in TOKENS.items()
        ]
        lim = {"general": "0", "public": "0", "channels": "0", **(limits or {})}
        server = ApiServer(
            routes=registry().routes,
            authenticator=TokenAuthenticator(tokens),
            limiter=RateLimiter({g: parse_rate_limit(t) for g, t in lim.items()}),
            max_body_bytes=2048,
            log=structlog.get_logger("test"),
        )
        listen = f"127.0.0.1:{free_port()}"
        await server.start(listen)
        servers.append(server)
        return f"http://{listen}"

    yield start
    for s in servers:
        await s.stop()


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def call(method: str, url: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp


async def test_roles_and_tokens(api: Callable[..., Any]) -> None:
    url = await api()
    assert (await call("GET", f"{url}/v1/public"))[0] == 200
    status, body, resp = await call("GET", f"{url}/v1/things")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await call("GET", f"{url}/v1/things", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, body, _ = await call("GET", f"{url}/v1/things", headers={"Authorization": "Basic dG9rLWFkbWlu"})
    assert status == 401
    for role in ("readonly", "invoice", "admin"):
        status, body, _ = await call("GET", f"{url}/v1/things", headers=auth(role))
        assert (status, body["role"]) == (200, role)
    status, body, _ = await call(
        "POST", f"{url}/v1/things", json={"amount_msat": 5}, headers=auth("readonly")
    )
    assert status == 403 and "invoice role" in body["error"]["message"]
    status, body, _ = await call("POST", f"{url}/v1/things", json={"amount_msat": 5}, headers=auth("invoice"))
    assert (status, body) == (201, {"amount_msat": 5, "role": "invoice"})
    assert (await call("DELETE", f"{url}/v1/things/x", headers=auth("invoice")))[0] == 403


async def test_validation_errors_name_the_field(api: Callable[..., Any]) -> None:
    url = await api()
    h = auth("admin")
    cases = [
        ({"amount_msat": "many"}, "amount_msat", "invalid_field"),
        ({"amount_msat": -1}, "amount_msat", "invalid_field"),
        ({"amount_msat": 10**30}, "amount_msat", "invalid_field"),
        ({"note": "x"}, "amount_msat", "missing_field"),
        ({"amount_msat": 1, "bogus": 1}, "bogus", "unknown_field"),
        ({"amount_msat": 1, "price": "NaN-ish"}, "price", "invalid_field"),
        ([1, 2], "body", "invalid_body"),
    ]
    for payload, field, code in cases:
        status, body, _ = await call("POST", f"{url}/v1/things", json=payload, headers=h)
        assert status == 400, payload
        assert body["error"]["field"] == field, (payload, body)
        assert body["error"]["code"] == code, (payload, body)
    status, body, _ = await call("POST", f"{url}/v1/things", data=b"{not json", headers=h)
    assert (status, body["error"]["field"], body["error"]["code"]) == (400, "body", "invalid_json")
    status, body, _ = await call("POST", f"{url}/v1/things", data=b"", headers=h)
    assert (status, body["error"]["field"]) == (400, "body")
    status, body, _ = await call("POST", f"{url}/v1/things", data=b"x" * 5000, headers=h)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    status, body, _ = await call("GET", f"{url}/v1/things?limit=0", headers=h)
    assert (status, body["error"]["field"]) == (400, "query.limit")
    status, body, _ = await call("GET", f"{url}/v1/things?limit=abc", headers=h)
    assert (status, body["error"]["field"]) == (400, "query.limit")


async def test_error_shape_everywhere(api: Callable[..., Any]) -> None:
    url = await api()
    status, body, _ = await call("GET", f"{url}/v1/things/7", headers=auth("readonly"))
    assert (status, body) == (
        404,
        {"error": {"code": "thing_not_found", "message": "no such thing", "field": "thing_id"}},
    )
    status, body, _ = await call("GET", f"{url}/v1/nowhere")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, resp = await call("PUT", f"{url}/v1/things", headers=auth("admin"))
    assert status == 405 and body["error"]["code"] == "method_not_allowed" and "GET" in resp.headers["Allow"]
    status, body, _ = await call("DELETE", f"{url}/v1/things/7", headers=auth("admin"))
    assert status == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in str(body) and "Traceback" not in str(body)


async def test_rate_limits_per_client_and_group(api: Callable[..., Any]) -> None:
    url = await api({"general": "3/1m", "channels": "1/1h", "public": "2/1m"})
    for _ in range(3):
        assert (await call("GET", f"{url}/v1/things", headers=auth("readonly")))[0] == 200
    status, body, resp = await call("GET", f"{url}/v1/things", headers=auth("readonly"))
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 20
    # Another client, and another group, have their own budgets.
    assert (await call("GET", f"{url}/v1/things", headers=auth("admin")))[0] == 200
    assert (await call("DELETE", f"{url}/v1/things/1", headers=auth("admin")))[0] == 500
    status, _, resp = await call("DELETE", f"{url}/v1/things/1", headers=auth("admin"))
    assert status == 429 and int(resp.headers["Retry-After"]) > 3000
    # Unauthenticated callers are limited by address.
    assert [(await call("GET", f"{url}/v1/public"))[0] for _ in range(3)] == [200, 200, 429]


def test_rate_limit_parsing_and_gcra() -> None:
    assert parse_rate_limit("100/15m").model_dump() == {"requests": 100, "period": 900}
    assert parse_rate_limit("5/h").period == 3600
    assert parse_rate_limit("0").requests == 0
    for bad in ("", "abc", "10", "10/0m", "-1/m", "5/1w"):
        with pytest.raises(ValueError):
            parse_rate_limit(bad)
    limiter = RateLimiter({"general": parse_rate_limit("10/100s")})
    assert all(limiter.hit("a", "general", 0.0) is None for _ in range(10))
    wait = limiter.hit("a", "general", 0.0)
    assert wait == pytest.approx(10.0)
    assert limiter.hit("a", "general", 10.0) is None  # one request's worth recovered
    assert limiter.hit("a", "general", 10.0) is not None
    # A group without its own limit gets general's numbers, as a budget of its own.
    assert [limiter.hit("a", "other", 0.0) is None for _ in range(11)] == [True] * 10 + [False]
    assert RateLimiter.retry_after(0.2) == "1"


def test_settings_defaults_and_errors() -> None:
    s = HttpApiSettings()
    assert s.listen == "127.0.0.1:8080"
    assert s.limits()["general"].requests == 100 and s.limits()["general"].period == 900
    assert s.limits()["channels"].requests == 10 and s.limits()["rebalance"].period == 3600
    with pytest.raises(ValueError, match="general"):
        HttpApiSettings(rate_limits={"general": "lots"})
    sha = "a" * 64
    with pytest.raises(ValueError, match="unique"):
        HttpApiSettings(tokens=[{"name": "x", "sha256": sha, "role": "admin"}] * 2)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        HttpApiSettings(tokens=[{"name": "x", "sha256": "short", "role": "admin"}])  # type: ignore[list-item]
    assert HttpApiSettings.model_fields["listen"].json_schema_extra == {"restart": True}


def test_token_check_is_exact() -> None:
    sha = hashlib.sha256(b"secret").hexdigest()
    auth_ = TokenAuthenticator([ApiToken(name="shop", sha256=sha, role="invoice")])
    assert auth_.check("Bearer secret") is not None
    assert auth_.check("bearer secret").role == "invoice"  # type: ignore[union-attr]
    for header in (None, "", "Bearer", "Bearer secre", "Bearer secret2", "Token secret"):
        assert auth_.check(header) is None


def test_openapi_document_covers_routes() -> None:
    doc = build_openapi(registry().routes, title="t", version="1")
    assert doc["openapi"] == "3.1.0"
    post = doc["paths"]["/v1/things"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Thing"
    }
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("ThingOut")
    assert {"400", "401", "403", "413", "429"} <= set(post["responses"])
    get = doc["paths"]["/v1/things"]["get"]
    assert get["parameters"][0]["name"] == "limit" and get["parameters"][0]["in"] == "query"
    assert doc["paths"]["/v1/public"]["get"]["security"] == []
    assert doc["paths"]["/v1/things/{thing_id}"]["get"]["parameters"][0]["in"] == "path"
    assert "ErrorBody" in doc["components"]["schemas"]
