"""Node, balance, decode, payment and channel endpoints (LND through ``daemon.lnd``)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from lightningd_py.errors import LndError
from lightningd_py.events import PaymentEvent, PaymentSucceeded
from lightningd_py.web import ApiError, ApiRequest, RouteRegistry

from .models import (
    Balances,
    ChannelClosed,
    ChannelList,
    ChannelOpen,
    ChannelOpened,
    CloseQuery,
    Decoded,
    DecodeRequest,
    NodeOut,
    PaymentCreate,
    PaymentList,
    PaymentListQuery,
    PaymentOut,
)
from .server import call_lnd, lnd_api_error

if TYPE_CHECKING:
    import sqlite3

    from lightningd_py.lnd.types import Payment

    from . import HttpApi

__all__ = ["PAYMENTS_SQL", "add_node_routes", "payment_event_row", "record_payment_event"]

_BOLT11 = re.compile(r"^(lightning:)?ln(bc|tb|bcrt|sb|tbs)[0-9a-z]*1[02-9ac-hj-np-z]{6,}$", re.IGNORECASE)
_POINT = re.compile(r"^[0-9a-f]{64}:\d{1,10}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")

PAYMENTS_SQL = """
CREATE TABLE http_api_payments (
    payment_hash    TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    amount_msat     INTEGER NOT NULL DEFAULT 0,
    fee_msat        INTEGER NOT NULL DEFAULT 0,
    preimage        TEXT NOT NULL DEFAULT '',
    payment_request TEXT NOT NULL DEFAULT '',
    failure_reason  TEXT NOT NULL DEFAULT '',
    payment_index   INTEGER NOT NULL DEFAULT 0,
    created_at_ns   INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL NOT NULL
);
CREATE INDEX http_api_payments_index ON http_api_payments (payment_index);
"""

# "succeeded" is final and outranks a failed earlier attempt for the same hash.
_UPSERT_PAYMENT = """
INSERT INTO http_api_payments (payment_hash, status, amount_msat, fee_msat, preimage, payment_request,
    failure_reason, payment_index, created_at_ns, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (payment_hash) DO UPDATE SET
    status = excluded.status, amount_msat = excluded.amount_msat, fee_msat = excluded.fee_msat,
    preimage = CASE WHEN excluded.preimage != '' THEN excluded.preimage ELSE preimage END,
    payment_request = CASE WHEN excluded.payment_request != '' THEN excluded.payment_request
                           ELSE payment_request END,
    failure_reason = excluded.failure_reason,
    payment_index = max(payment_index, excluded.payment_index),
    created_at_ns = CASE WHEN created_at_ns = 0 THEN excluded.created_at_ns ELSE created_at_ns END,
    updated_at = excluded.updated_at
WHERE http_api_payments.status != 'succeeded'
"""

_PAY_STATUS = {
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "IN_FLIGHT": "in_flight",
    "INITIATED": "in_flight",
}


def payment_event_row(event: PaymentEvent) -> tuple[Any, ...]:
    succeeded = isinstance(event, PaymentSucceeded)
    return (
        event.payment_hash,
        "succeeded" if succeeded else "failed",
        event.value_msat,
        event.fee_msat,
        event.payment_preimage,
        event.payment_request,
        "" if succeeded else event.failure_reason,
        event.payment_index,
        event.creation_time_ns,
        time.time(),
    )


async def record_payment_event(api: HttpApi, event: PaymentEvent) -> None:
    await api.daemon.store.execute(_UPSERT_PAYMENT, payment_event_row(event))


def _payment_row(p: Payment) -> tuple[Any, ...]:
    status = _PAY_STATUS.get(p.status, "in_flight")
    failure = p.failure_reason if status == "failed" else ""
    return (
        p.payment_hash,
        status,
        p.value_msat,
        p.fee_msat,
        p.payment_preimage,
        p.payment_request,
        failure,
        p.payment_index,
        p.creation_time_ns,
        time.time(),
    )


_PAY_COLS = (
    "payment_hash, status, amount_msat, fee_msat, preimage, payment_request, failure_reason, "
    "payment_index, created_at_ns"
)


def _payment_out(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    return {
        "payment_hash": row[0],
        "status": row[1],
        "amount_msat": row[2],
        "fee_msat": row[3],
        "preimage": row[4] or None,
        "payment_request": row[5],
        "failure_reason": row[6] or None,
        "payment_index": row[7],
        "created_at_ns": row[8],
    }


def _check_bolt11(text: str, field: str = "payment_request") -> str:
    text = text.strip()
    if not _BOLT11.match(text):
        raise ApiError(400, "invalid_payment_request", f"{field}: not a BOLT 11 payment request", field)
    return text


def add_node_routes(api: HttpApi, router: RouteRegistry) -> None:
    daemon = api.daemon

    async def node(req: ApiRequest) -> dict[str, Any]:
        info = await call_lnd(daemon.lnd.get_info())
        return {k: getattr(info, k) for k in NodeOut.model_fields}

    async def balances(req: ApiRequest) -> dict[str, Any]:
        wallet = await call_lnd(daemon.lnd.wallet_balance())
        chans = await call_lnd(daemon.lnd.channel_balance())
        return {
            "onchain_total_sat": wallet.total_balance_sat,
            "onchain_confirmed_sat": wallet.confirmed_balance_sat,
            "onchain_unconfirmed_sat": wallet.unconfirmed_balance_sat,
            "onchain_locked_sat": wallet.locked_balance_sat,
            "channels_local_msat": chans.local_balance_msat,
            "channels_remote_msat": chans.remote_balance_msat,
            "channels_unsettled_local_msat": chans.unsettled_local_balance_msat,
            "channels_pending_open_local_msat": chans.pending_open_local_balance_msat,
        }

    async def decode(req: ApiRequest) -> dict[str, Any]:
        body: DecodeRequest = req.body
        text = _check_bolt11(body.payment_request)
        try:
            pr = await daemon.lnd.decode_pay_req(text)
        except ValueError as exc:
            raise ApiError(
                400, "invalid_payment_request", f"payment_request: {exc}", "payment_request"
            ) from exc
        except LndError as exc:
            if exc.kind in ("invalid", "other"):
                raise ApiError(
                    400,
                    "invalid_payment_request",
                    f"payment_request: LND cannot decode it: {exc.details}",
                    "payment_request",
                ) from exc
            raise lnd_api_error(exc) from exc
        return {
            "destination": pr.destination,
            "payment_hash": pr.payment_hash,
            "amount_msat": pr.num_msat,
            "timestamp": pr.timestamp,
            "expiry": pr.expiry,
            "expires_at": pr.timestamp + pr.expiry,
            "description": pr.description,
            "description_hash": pr.description_hash,
            "cltv_expiry": pr.cltv_expiry,
            "payment_addr": pr.payment_addr,
        }

    async def pay(req: ApiRequest) -> dict[str, Any]:
        body: PaymentCreate = req.body
        text = _check_bolt11(body.payment_request)
        payment = await call_lnd(
            daemon.lnd.send_payment(
                text,
                amt_msat=body.amount_msat,
                fee_limit_msat=body.fee_limit_msat,
                timeout_seconds=body.timeout_seconds,
                max_parts=body.max_parts,
            ),
            "payment_request",
        )
        row = _payment_row(payment)
        await daemon.store.write(lambda conn: conn.execute(_UPSERT_PAYMENT, row))
        return _payment_out(row)

    async def get_payment(req: ApiRequest) -> dict[str, Any]:
        payment_hash = req.path["payment_hash"].lower()
        if not _HASH.match(payment_hash):
            raise ApiError(
                400, "invalid_payment_hash", "payment_hash: expected 64 hex characters", "payment_hash"
            )
        row = await daemon.store.fetchone(
            f"SELECT {_PAY_COLS} FROM http_api_payments WHERE payment_hash = ?", (payment_hash,)
        )
        if row is None:
            raise ApiError(
                404, "payment_not_found", f"no payment with payment_hash {payment_hash}", "payment_hash"
            )
        return _payment_out(row)

    async def list_payments(req: ApiRequest) -> dict[str, Any]:
        q: PaymentListQuery = req.query
        where, params = [], []
        if q.status is not None:
            where.append("status = ?")
            params.append(q.status)
        if q.cursor is not None:
            try:
                cursor = int(q.cursor)
            except ValueError as exc:
                raise ApiError(
                    400, "invalid_cursor", "query.cursor: not a cursor this API returned", "query.cursor"
                ) from exc
            where.append("rowid < ?")
            params.append(cursor)
        sql = f"SELECT {_PAY_COLS}, rowid FROM http_api_payments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC LIMIT ?"
        params.append(q.limit + 1)
        rows = await daemon.store.fetchall(sql, tuple(params))
        page = rows[: q.limit]
        next_cursor = str(page[-1][9]) if len(rows) > q.limit else None
        return {"payments": [_payment_out(r) for r in page], "next_cursor": next_cursor}

    async def channels(req: ApiRequest) -> dict[str, Any]:
        chans = await call_lnd(daemon.lnd.list_channels())
        pending = await call_lnd(daemon.lnd.pending_channels())
        out_pending = []
        for state, items in (
            ("pending_open", pending.pending_open),
            ("waiting_close", pending.waiting_close),
            ("force_closing", pending.force_closing),
        ):
            for p in items:
                out_pending.append(
                    {
                        "channel_point": p.channel_point,
                        "remote_pubkey": p.remote_pubkey,
                        "capacity_sat": p.capacity_sat,
                        "local_balance_sat": p.local_balance_sat,
                        "state": state,
                        "closing_txid": p.closing_txid or None,
                    }
                )
        return {
            "channels": [
                {
                    "chan_id": str(c.chan_id),
                    "channel_point": c.channel_point,
                    "remote_pubkey": c.remote_pubkey,
                    "capacity_sat": c.capacity_sat,
                    "local_balance_sat": c.local_balance_sat,
                    "remote_balance_sat": c.remote_balance_sat,
                    "active": c.active,
                    "private": c.private,
                    "initiator": c.initiator,
                    "peer_alias": c.peer_alias,
                }
                for c in chans
            ],
            "pending": out_pending,
        }

    async def open_channel(req: ApiRequest) -> dict[str, Any]:
        body: ChannelOpen = req.body
        if body.push_sat >= body.local_funding_amount_sat:
            raise ApiError(
                400, "invalid_field", "push_sat: must be less than local_funding_amount_sat", "push_sat"
            )
        point = await call_lnd(
            daemon.lnd.open_channel(
                body.node_pubkey,
                body.local_funding_amount_sat,
                push_sat=body.push_sat,
                private=body.private,
                sat_per_vbyte=body.sat_per_vbyte,
            ),
            "node_pubkey",
        )
        return {"channel_point": point}

    async def close_channel(req: ApiRequest) -> dict[str, Any]:
        point = req.path["channel_point"].lower()
        if not _POINT.match(point):
            raise ApiError(
                400,
                "invalid_channel_point",
                "channel_point: expected <funding txid>:<output index>",
                "channel_point",
            )
        q: CloseQuery = req.query
        if q.force and q.sat_per_vbyte is not None:
            raise ApiError(
                400,
                "invalid_field",
                "query.sat_per_vbyte: not accepted for a force close",
                "query.sat_per_vbyte",
            )
        txid = await call_lnd(
            daemon.lnd.close_channel(point, force=q.force, sat_per_vbyte=q.sat_per_vbyte), "channel_point"
        )
        return {"channel_point": point, "closing_txid": txid}

    r = router
    r.add(
        "GET",
        "/v1/node",
        node,
        role="readonly",
        summary="This node's identity and sync state",
        response=NodeOut,
        tags=("node",),
        responses={409: "LND refused the request"},
    )
    r.add(
        "GET",
        "/v1/balances",
        balances,
        role="admin",
        summary="On-chain and channel balances",
        response=Balances,
        tags=("node",),
        responses={409: "LND refused the request"},
    )
    r.add(
        "POST",
        "/v1/decode",
        decode,
        role="readonly",
        summary="Decode a BOLT 11 payment request",
        body=DecodeRequest,
        response=Decoded,
        tags=("payments",),
    )
    r.add(
        "POST",
        "/v1/payments",
        pay,
        role="admin",
        summary="Pay a BOLT 11 invoice (waits for the result)",
        body=PaymentCreate,
        response=PaymentOut,
        tags=("payments",),
        responses={409: "LND refused the request", 504: "LND did not answer in time"},
    )
    r.add(
        "GET",
        "/v1/payments",
        list_payments,
        role="admin",
        summary="List outgoing payments, newest first",
        query=PaymentListQuery,
        response=PaymentList,
        tags=("payments",),
    )
    r.add(
        "GET",
        "/v1/payments/{payment_hash}",
        get_payment,
        role="admin",
        summary="Get an outgoing payment",
        response=PaymentOut,
        tags=("payments",),
        responses={404: "No such payment"},
    )
    r.add(
        "GET",
        "/v1/channels",
        channels,
        role="admin",
        summary="List open and pending channels",
        group="channels",
        response=ChannelList,
        tags=("channels",),
        responses={409: "LND refused the request"},
    )
    r.add(
        "POST",
        "/v1/channels",
        open_channel,
        role="admin",
        summary="Open a channel to a connected peer",
        group="channels",
        body=ChannelOpen,
        response=ChannelOpened,
        status=201,
        tags=("channels",),
        responses={409: "LND refused the request", 504: "LND did not answer in time"},
    )
    r.add(
        "DELETE",
        "/v1/channels/{channel_point}",
        close_channel,
        role="admin",
        summary="Close a channel cooperatively, or by force with ?force=true",
        group="channels",
        query=CloseQuery,
        response=ChannelClosed,
        tags=("channels",),
        responses={404: "No such channel", 409: "LND refused the request", 504: "LND did not answer in time"},
    )
