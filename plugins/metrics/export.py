"""The streamed export of the transaction history (CSV or one JSON array).

Rows are read page by page (keyset pagination, oldest first) on reader connections and
written to the response as they come, so exporting years of history uses constant
memory and the client sees the first bytes at once.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from . import analytics
from .analytics import sat

if TYPE_CHECKING:
    from lightningd_py.store import StoreHandle
    from lightningd_py.web import ApiRequest

    from .queries import ExportQuery

__all__ = ["EXPORT_COLUMNS", "EXPORT_PAGE", "history_item", "iso", "stream_export"]

EXPORT_PAGE = 1000
_json = msgspec.json.Encoder()


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# The CSV columns, in order.
EXPORT_COLUMNS = (
    "time",
    "kind",
    "status",
    "amount_msat",
    "fee_msat",
    "payment_hash",
    "chan_in",
    "chan_out",
    "created",
    "description",
    "id",
)


def history_item(row: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics_tx`` row as the history and the export present it."""
    return {
        # An invoice is known by its payment hash (its key is its add index).
        "id": f"invoice:{row['payment_hash']}" if row["kind"] == "invoice" else f"{row['kind']}:{row['key']}",
        "kind": row["kind"],
        "status": row["status"],
        "time": iso(row["time"]),
        "created": iso(row["created"]),
        "amount_msat": row["amount_msat"],
        "amount_sat": sat(row["amount_msat"]),
        "fee_msat": row["fee_msat"],
        "payment_hash": row["payment_hash"] or None,
        "chan_in": row["chan_in"] or None,
        "chan_out": row["chan_out"] or None,
        "description": row["description"],
    }


def _csv_line(values: tuple[str, ...]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue().encode()


async def stream_export(store: StoreHandle, request: ApiRequest, fmt: str) -> web.StreamResponse:
    """Write the filtered history to the client as an attachment, page by page, as
    ``fmt`` ``"csv"`` or ``"json"`` (one array)."""
    query: ExportQuery = request.query
    start, end = query.bounds()
    kinds, statuses, chan = query.kinds, query.statuses, query.channel
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
            "Content-Disposition": f'attachment; filename="lightningd-history-{stamp}.{fmt}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request.raw)
    after: tuple[float, str, str] | None = None
    first = True
    if fmt == "json":
        await response.write(b"[")
    else:
        await response.write(_csv_line(EXPORT_COLUMNS))
    while True:
        cursor = after
        rows = await store.read(
            lambda c, cursor=cursor: analytics.history_page(
                c,
                start=start,
                end=end,
                kinds=kinds,
                statuses=statuses,
                chan_id=chan,
                after=cursor,
                limit=EXPORT_PAGE,
                ascending=True,
            )
        )
        if not rows:
            break
        if fmt == "json":
            parts = [
                (b"" if first and i == 0 else b",") + _json.encode(history_item(r))
                for i, r in enumerate(rows)
            ]
            await response.write(b"\n".join(parts))
        else:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            for r in rows:
                item = history_item(r)
                writer.writerow([item[k] if item[k] is not None else "" for k in EXPORT_COLUMNS])
            await response.write(buf.getvalue().encode())
        first = False
        last = rows[-1]
        after = (last["time"], last["kind"], last["id"])
        if len(rows) < EXPORT_PAGE:
            break
    if fmt == "json":
        await response.write(b"]\n")
    await response.write_eof()
    return response
