"""Invoice endpoints: create (with Idempotency-Key), get, list, long-poll wait, QR code,
cancel. Backed by the invoice_tracker plugin's tables through its query module
(``lightningd_py.plugins.invoice_tracker.records``); answer 503 when it is disabled."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import sqlite3
import time
from decimal import ROUND_HALF_UP
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from lightningd_py.plugins.invoice_tracker import records

from lightningd_py.events import InvoiceCanceled, InvoiceEvent
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

from .models import (
    MAX_MSAT,
    InvoiceCreate,
    InvoiceHistory,
    InvoiceList,
    InvoiceListQuery,
    InvoiceOut,
    WaitQuery,
)
from .server import call_lnd

if TYPE_CHECKING:
    from . import HttpApi

__all__ = ["IDEMPOTENCY_SQL", "add_invoice_routes", "amount_in_msat", "check_payment_hash"]

MSAT_PER_BTC = 100_000_000_000
_HASH = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_json = msgspec.json.Encoder(decimal_format="string")

IDEMPOTENCY_SQL = """
CREATE TABLE http_api_idempotency (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    response    BLOB NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (client, key)
) WITHOUT ROWID;
CREATE INDEX http_api_idempotency_created ON http_api_idempotency (created);
"""


def check_payment_hash(value: str) -> str:
    """A payment hash from the path, lower-cased; 400 naming the field otherwise."""
    value = value.lower()
    if not _HASH.match(value):
        raise ApiError(
            400, "invalid_payment_hash", "payment_hash: expected 64 hex characters", "payment_hash"
        )
    return value


async def amount_in_msat(api: HttpApi, body: InvoiceCreate) -> tuple[int, dict[str, Any] | None]:
    """The invoice amount in msat and the fiat details when it was given in fiat."""
    given = [
        name
        for name in ("amount_msat", "amount_sat", "amount_btc", "fiat_amount")
        if getattr(body, name) is not None
    ]
    if len(given) > 1:
        raise ApiError(400, "ambiguous_amount", f"give only one amount; got {', '.join(given)}", given[1])
    if body.fiat_currency is not None and body.fiat_amount is None:
        raise ApiError(400, "missing_field", "fiat_amount: required with fiat_currency", "fiat_amount")
    if body.fiat_amount is not None and body.fiat_currency is None:
        raise ApiError(400, "missing_field", "fiat_currency: required with fiat_amount", "fiat_currency")
    if body.amount_msat is not None:
        return body.amount_msat, None
    if body.amount_sat is not None:
        return body.amount_sat * 1000, None
    if body.amount_btc is not None:
        msat = body.amount_btc * MSAT_PER_BTC
        if msat != msat.to_integral_value():
            raise ApiError(400, "invalid_field", "amount_btc: more precise than a millisatoshi", "amount_btc")
        return int(msat), None
    if body.fiat_amount is not None and body.fiat_currency is not None:
        rate, source = await api.rates.rate(body.fiat_currency)
        msat = int((body.fiat_amount * MSAT_PER_BTC / rate).to_integral_value(ROUND_HALF_UP))
        if msat < 1:
            raise ApiError(
                400, "invalid_field", "fiat_amount: worth less than one millisatoshi", "fiat_amount"
            )
        if msat > MAX_MSAT:
            raise ApiError(400, "invalid_field", "fiat_amount: more than all bitcoin", "fiat_amount")
        return msat, {
            "currency": body.fiat_currency,
            "amount": str(body.fiat_amount),
            "exchange_rate": str(rate),
            "source": source,
        }
    return 0, None


def add_invoice_routes(api: HttpApi, router: RouteRegistry) -> None:
    daemon = api.daemon
    tracker_name = "invoice_tracker"
    inflight: dict[tuple[str, str], asyncio.Future[None]] = {}
    lookups = records.InvoiceLookups(daemon.store)

    checked = [0.0]

    def require_tracker() -> None:
        # The tracker may be disabled at run time (plugin_failure = "skip"): look again
        # every second, not on every request.
        now = time.monotonic()
        if now - checked[0] < 1.0:
            return
        if daemon.config.enabled.get(tracker_name, True) and tracker_name in daemon.status()["plugins"]:
            checked[0] = now
            return
        raise ApiError(
            503,
            "invoice_tracker_disabled",
            "invoice endpoints need the invoice_tracker plugin; enable [plugins.invoice_tracker]",
        )

    async def create(req: ApiRequest) -> web.Response:
        require_tracker()
        body: InvoiceCreate = req.body
        key = req.raw.headers.get("Idempotency-Key")
        if key is None:
            return await _create(req, body)
        if not _KEY.match(key):
            raise ApiError(
                400, "invalid_header", "Idempotency-Key: 1 to 255 visible ASCII characters", "Idempotency-Key"
            )
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        slot = (req.client, key)
        # A retry racing the first request waits for it rather than creating twice.
        while (pending := inflight.get(slot)) is not None:
            await asyncio.shield(pending)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inflight[slot] = done
        try:
            row = await daemon.store.fetchone(
                "SELECT fingerprint, status, response FROM http_api_idempotency WHERE client = ? AND key = ?",
                slot,
            )
            if row is not None:
                return _replay(row, fingerprint)
            return await _create(req, body, key=key, fingerprint=fingerprint)
        finally:
            del inflight[slot]
            done.set_result(None)

    def _replay(row: sqlite3.Row, fingerprint: str) -> web.Response:
        if row[0] != fingerprint:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
                "Idempotency-Key",
            )
        return web.Response(
            body=row[2],
            status=row[1],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )

    async def _create(
        req: ApiRequest, body: InvoiceCreate, *, key: str | None = None, fingerprint: str = ""
    ) -> web.Response:
        msat, fiat = await amount_in_msat(api, body)
        expiry = body.expiry or api.settings.default_invoice_expiry
        added = await call_lnd(
            daemon.lnd.add_invoice(value_msat=msat, memo=body.memo, expiry=expiry, private=body.private)
        )
        now = int(time.time())
        created = records.CreatedInvoice(
            payment_hash=added.payment_hash,
            payment_request=added.payment_request,
            memo=body.memo,
            value_msat=msat,
            created_at=now,
            expires_at=now + expiry,
            add_index=added.add_index,
            private=body.private,
            fiat_currency=fiat["currency"] if fiat else None,
            fiat_amount=fiat["amount"] if fiat else None,
            exchange_rate=fiat["exchange_rate"] if fiat else None,
            metadata=body.metadata,
        )
        out = {
            "payment_hash": created.payment_hash,
            "payment_request": created.payment_request,
            "memo": created.memo,
            "amount_msat": msat,
            "amount_paid_msat": 0,
            "status": "pending",
            "created_at": now,
            "expires_at": created.expires_at,
            "settled_at": None,
            "preimage": None,
            "add_index": created.add_index,
            "settle_index": 0,
            "is_keysend": False,
            "private": body.private,
            "fiat": {k: fiat[k] for k in ("currency", "amount", "exchange_rate")} if fiat else None,
            "metadata": body.metadata,
        }
        encoded = _json.encode(out)
        created_at = time.time()

        def write(conn: sqlite3.Connection) -> None:
            records.write_creation(conn, created)
            if key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO http_api_idempotency "
                    "(client, key, fingerprint, status, response, created) VALUES (?, ?, ?, 201, ?, ?)",
                    (req.client, key, fingerprint, encoded, created_at),
                )

        await daemon.store.write(write)
        return web.Response(body=encoded, status=201, content_type="application/json")

    async def get(req: ApiRequest) -> dict[str, Any]:
        require_tracker()
        payment_hash = check_payment_hash(req.path["payment_hash"])
        invoice = await lookups.get(payment_hash)
        if invoice is None:
            raise ApiError(
                404, "invoice_not_found", f"no invoice with payment_hash {payment_hash}", "payment_hash"
            )
        return invoice

    async def history(req: ApiRequest) -> dict[str, Any]:
        invoice = await get(req)
        changes = await records.invoice_history(daemon.store, invoice["payment_hash"])
        return {"payment_hash": invoice["payment_hash"], "changes": changes}

    async def list_(req: ApiRequest) -> dict[str, Any]:
        require_tracker()
        q: InvoiceListQuery = req.query
        try:
            invoices, cursor = await records.list_invoices(
                daemon.store,
                status=q.status,
                created_after=q.created_after,
                created_before=q.created_before,
                cursor=q.cursor,
                limit=q.limit,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_cursor", f"query.cursor: {exc}", "query.cursor") from exc
        return {"invoices": invoices, "next_cursor": cursor}

    async def wait(req: ApiRequest) -> dict[str, Any]:
        require_tracker()
        payment_hash = check_payment_hash(req.path["payment_hash"])
        timeout = min(req.query.timeout, api.settings.max_wait_seconds)
        deadline = time.monotonic() + timeout
        tracker = daemon.status()["plugins"].get(tracker_name, {})
        # Events up to the tracker's cursor are in its table; later ones are read here.
        after = int(tracker.get("cursor", daemon.journal.last_id))
        invoice = await records.get_invoice(daemon.store, payment_hash)
        if invoice is None:
            raise ApiError(
                404, "invoice_not_found", f"no invoice with payment_hash {payment_hash}", "payment_hash"
            )
        journal = daemon.journal
        while invoice["status"] in ("pending", "accepted"):
            events = await journal.read(after, limit=1000)
            if events:
                after = events[-1].id
                for event in events:
                    if isinstance(event, InvoiceEvent) and event.payment_hash == payment_hash:
                        invoice = _merge(invoice, event)
                continue
            left = deadline - time.monotonic()
            if invoice["expires_at"]:
                # Wake up when the invoice expires, even if no event says so yet.
                left = min(left, invoice["expires_at"] - time.time() + 0.05)
            if left <= 0:
                invoice["status"] = records.effective_status(
                    invoice["status"], invoice["expires_at"], time.time()
                )
                if time.monotonic() >= deadline or invoice["status"] == "expired":
                    break
                continue
            await journal.wait(after, left)
        return invoice

    async def qr(req: ApiRequest, kind: str) -> web.Response:
        invoice = await get(req)
        text = "lightning:" + invoice["payment_request"].upper()
        # Imported on the first QR code asked for: most daemons never draw one, and the
        # import costs about 0.7 MB resident.
        import segno

        code = segno.make(text, error="m", micro=False)
        buf = io.BytesIO()
        scale = 4
        if kind == "svg":
            code.save(buf, kind="svg", scale=scale, border=2, xmldecl=False)
            content_type = "image/svg+xml"
        else:
            code.save(buf, kind="png", scale=scale, border=2)
            content_type = "image/png"
        return web.Response(
            body=buf.getvalue(), content_type=content_type, headers={"Cache-Control": "max-age=60"}
        )

    async def qr_svg(req: ApiRequest) -> web.Response:
        return await qr(req, "svg")

    async def qr_png(req: ApiRequest) -> web.Response:
        return await qr(req, "png")

    async def cancel(req: ApiRequest) -> dict[str, Any]:
        invoice = await get(req)
        if invoice["status"] not in ("pending", "accepted"):
            raise ApiError(
                409,
                "invoice_not_open",
                f"the invoice is {invoice['status']}; only open invoices can be canceled",
                "payment_hash",
            )
        await call_lnd(daemon.lnd.cancel_invoice(invoice["payment_hash"]), "payment_hash")
        # LND's invoice stream never reports cancellations: journal the fact now, so the
        # tracker, webhooks and SSE see it at once (the journal drops the copy the
        # daemon's own sweep would find later).
        await daemon.emit(
            InvoiceCanceled(
                payment_hash=invoice["payment_hash"],
                payment_request=invoice["payment_request"],
                memo=invoice["memo"],
                value_msat=invoice["amount_msat"],
                amt_paid_msat=invoice["amount_paid_msat"],
                creation_date=invoice["created_at"],
                expiry=max(0, invoice["expires_at"] - invoice["created_at"]),
                add_index=invoice["add_index"],
                private=invoice["private"],
            )
        )
        invoice["status"] = "canceled"
        return invoice

    r = router
    inv = ("invoices",)
    r.add(
        "POST",
        "/v1/invoices",
        create,
        role="invoice",
        summary="Create an invoice",
        body=InvoiceCreate,
        response=InvoiceOut,
        status=201,
        tags=inv,
        responses={409: "LND refused the request", 422: "Idempotency-Key reused with a different body"},
    )
    r.add(
        "GET",
        "/v1/invoices",
        list_,
        role="readonly",
        summary="List invoices, newest first",
        query=InvoiceListQuery,
        response=InvoiceList,
        tags=inv,
    )
    r.add(
        "GET",
        "/v1/invoices/{payment_hash}",
        get,
        role="readonly",
        summary="Get an invoice",
        response=InvoiceOut,
        tags=inv,
        responses={404: "No such invoice"},
    )
    r.add(
        "GET",
        "/v1/invoices/{payment_hash}/history",
        history,
        role="readonly",
        summary="An invoice's state changes, oldest first",
        response=InvoiceHistory,
        tags=inv,
        responses={404: "No such invoice"},
    )
    r.add(
        "GET",
        "/v1/invoices/{payment_hash}/wait",
        wait,
        role="readonly",
        summary="Wait until an invoice is paid, expired or canceled (long-poll)",
        query=WaitQuery,
        response=InvoiceOut,
        tags=inv,
        responses={404: "No such invoice"},
    )
    r.add(
        "GET",
        "/v1/invoices/{payment_hash}/qr.svg",
        qr_svg,
        role="readonly",
        summary="QR code of an invoice (SVG)",
        tags=inv,
        content_type="image/svg+xml",
        responses={404: "No such invoice"},
    )
    r.add(
        "GET",
        "/v1/invoices/{payment_hash}/qr.png",
        qr_png,
        role="readonly",
        summary="QR code of an invoice (PNG)",
        tags=inv,
        content_type="image/png",
        responses={404: "No such invoice"},
    )
    r.add(
        "POST",
        "/v1/invoices/{payment_hash}/cancel",
        cancel,
        role="invoice",
        summary="Cancel an open invoice",
        response=InvoiceOut,
        tags=inv,
        responses={404: "No such invoice", 409: "The invoice is not open"},
    )


def _merge(invoice: dict[str, Any], event: InvoiceEvent) -> dict[str, Any]:
    status = records.status_of_event(event)
    rank = {"pending": 0, "accepted": 1, "expired": 2, "canceled": 2, "paid": 3}
    if rank[status] > rank.get(invoice["status"], 0):
        invoice["status"] = status
    if event.amt_paid_msat:
        invoice["amount_paid_msat"] = max(invoice["amount_paid_msat"], event.amt_paid_msat)
    if event.settle_date:
        invoice["settled_at"] = event.settle_date
    if event.preimage:
        invoice["preimage"] = event.preimage
    if event.settle_index:
        invoice["settle_index"] = event.settle_index
    return invoice
