"""Health, the OpenAPI document, and the live event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

import lightningd_py
from lightningd_py.errors import PluginError
from lightningd_py.events import event_to_json, event_type_names
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

from .models import EventsQuery, Health
from .openapi import build_openapi

if TYPE_CHECKING:
    from . import HttpApi

__all__ = ["add_system_routes", "parse_types"]

# A plugin whose journal lag exceeds this is reported as not ok in the health report.
LAG_WARN = 10_000


def parse_types(text: str | None) -> frozenset[str] | None:
    """The event types a ``types`` filter selects (None: all); 400 on unknown types."""
    if text is None or not text.strip():
        return None
    known = event_type_names()
    chosen: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.endswith(".*") or part.endswith("*"):
            family = part.rstrip("*").rstrip(".")
            matched = [t for t in known if t.split(".")[0] == family]
        else:
            matched = [t for t in known if t == part]
        if not matched:
            raise ApiError(
                400,
                "invalid_field",
                f"query.types: unknown event type {part!r}; expected one of {', '.join(known)} "
                "or a family like invoice.*",
                "query.types",
            )
        chosen.update(matched)
    return frozenset(chosen) if chosen else None


def add_system_routes(api: HttpApi, router: RouteRegistry) -> None:
    daemon = api.daemon

    async def health(req: ApiRequest) -> dict[str, Any]:
        status = daemon.status()
        db = dict(status.get("database", {}))
        try:
            with_timeout = asyncio.wait_for(daemon.store.fetchone("SELECT 1"), timeout=2.0)
            await with_timeout
            db["query_ok"] = True
        except Exception as exc:  # health must answer whatever state the database is in
            db["query_ok"] = False
            db["error"] = db.get("error") or type(exc).__name__
        db["ok"] = bool(db.get("ok", True)) and db["query_ok"]
        lnd = dict(status.get("lnd", {}))
        plugins = {}
        for name, p in status.get("plugins", {}).items():
            plugins[name] = {
                "lag": p.get("lag", 0),
                "cursor": p.get("cursor", 0),
                "handled": p.get("handled", 0),
                "errors": p.get("errors", 0),
                "retrying": p.get("retrying", False),
                "ok": not p.get("retrying", False) and p.get("lag", 0) < LAG_WARN,
            }
        checks: dict[str, Any] = {}
        try:
            named = daemon.hooks.each_sync("ldp_health")
        except PluginError:
            # An async or failing implementation: ask again, isolating errors, unnamed.
            named = [(f"check{i}", c) for i, c in enumerate(await daemon.hooks.each("ldp_health"))]
        for name, contribution in named:
            if isinstance(contribution, Mapping):
                checks[name] = dict(contribution)
        ok = (
            bool(lnd.get("reachable"))
            and bool(lnd.get("active"))
            and db["ok"]
            and all(p["ok"] for p in plugins.values())
            and all(bool(c.get("ok", True)) for c in checks.values())
        )
        return {
            "ok": ok,
            "lnd": lnd,
            "database": db,
            "journal": dict(status.get("journal", {})),
            "plugins": plugins,
            "checks": checks,
        }

    openapi_cache: dict[str, bytes] = {}

    async def openapi(req: ApiRequest) -> web.Response:
        if "doc" not in openapi_cache:
            import json

            doc = build_openapi(api.routes, title="lightningd-py API", version=lightningd_py.__version__)
            openapi_cache["doc"] = json.dumps(doc).encode()
        return web.Response(body=openapi_cache["doc"], content_type="application/json")

    async def events(req: ApiRequest) -> web.StreamResponse:
        q: EventsQuery = req.query
        types = parse_types(q.types)
        header = req.raw.headers.get("Last-Event-ID")
        after: int
        if header is not None and header.strip():
            if not header.strip().isdigit():
                raise ApiError(400, "invalid_header", "Last-Event-ID: expected a journal id", "Last-Event-ID")
            after = int(header.strip())
        elif q.last_event_id is not None:
            after = q.last_event_id
        else:
            after = daemon.journal.last_id
        journal = daemon.journal
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(req.raw)
        heartbeat = api.settings.sse_heartbeat
        try:
            await resp.write(b": connected\nretry: 2000\n\n")
            while True:
                batch = await journal.read(after, limit=500)
                if batch:
                    after = batch[-1].id
                    chunks = []
                    for event in batch:
                        if types is None or event.type in types:
                            chunks.append(
                                b"id: %d\nevent: %s\ndata: %s\n\n"
                                % (event.id, event.type.encode(), event_to_json(event))
                            )
                    if chunks:
                        await resp.write(b"".join(chunks))
                    continue
                if not await journal.wait(after, heartbeat):
                    await resp.write(b": keepalive %d\n\n" % int(time.time()))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        return resp

    r = router
    r.add(
        "GET",
        "/v1/health",
        health,
        role=None,
        group="public",
        summary="Health: LND, database, per-plugin journal lag",
        response=Health,
        tags=("system",),
    )
    r.add(
        "GET",
        "/v1/openapi.json",
        openapi,
        role=None,
        group="public",
        summary="This OpenAPI document",
        tags=("system",),
    )
    r.add(
        "GET",
        "/v1/events",
        events,
        role="readonly",
        summary="Live event stream (Server-Sent Events)",
        query=EventsQuery,
        tags=("events",),
        content_type="text/event-stream",
    )
