"""The durable outbox: one row per (event, endpoint), written by the event hooks before
the plugin's journal cursor moves, updated by the delivery workers after each attempt.

A row is ``pending`` until a 2xx (``delivered``) or until the retry schedule is spent
(``failed``, kept for inspection and manual redelivery). The webhook-id is the row's
unique key, so replaying an event after a crash never creates a second row.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import anyio

from lightningd_py.api import Migration

__all__ = [
    "INSERT_SQL",
    "MIGRATIONS",
    "Delivery",
    "delivery_from_row",
    "row_to_api",
]

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE webhooks_deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id TEXT NOT NULL UNIQUE,
            event_id INTEGER,
            endpoint TEXT NOT NULL,
            event_type TEXT NOT NULL,
            event_time REAL NOT NULL,
            body BLOB NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            last_attempt_at REAL,
            last_status_code INTEGER,
            last_error TEXT,
            delivered_at REAL
        );
        CREATE INDEX webhooks_deliveries_pending
            ON webhooks_deliveries (endpoint, next_attempt_at) WHERE status = 'pending';
        CREATE INDEX webhooks_deliveries_endpoint ON webhooks_deliveries (endpoint, id);
        CREATE INDEX webhooks_deliveries_status ON webhooks_deliveries (status, id);
        CREATE TABLE webhooks_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    )
]

INSERT_SQL = (
    "INSERT OR IGNORE INTO webhooks_deliveries "
    "(msg_id, event_id, endpoint, event_type, event_time, body, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True, eq=False)
class Delivery:
    """One pending delivery as the workers hold it in memory.

    :ivar attempts: attempts already made (0 for a fresh delivery).
    :ivar due: monotonic-free unix time before which the next attempt must not start.
    :ivar done: set once an attempt finished, for callers waiting on the first result
        (the test-event API); created lazily so the hot path allocates nothing extra.
    """

    msg_id: str
    endpoint: str
    event_type: str
    event_time: float
    body: bytes
    attempts: int = 0
    due: float = 0.0
    last_status_code: int | None = None
    last_error: str | None = None
    done: anyio.Event | None = field(default=None, repr=False)


def delivery_from_row(row: sqlite3.Row) -> Delivery:
    return Delivery(
        msg_id=row["msg_id"],
        endpoint=row["endpoint"],
        event_type=row["event_type"],
        event_time=row["event_time"],
        body=bytes(row["body"]),
        attempts=row["attempts"],
        due=row["next_attempt_at"],
    )


def row_to_api(row: sqlite3.Row) -> dict[str, Any]:
    """A delivery as the HTTP API shows it (no body, no secret)."""
    return {
        "id": row["id"],
        "webhook_id": row["msg_id"],
        "endpoint": row["endpoint"],
        "event_type": row["event_type"],
        "event_id": row["event_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "next_attempt_at": row["next_attempt_at"] if row["status"] == "pending" else None,
        "last_attempt_at": row["last_attempt_at"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "delivered_at": row["delivered_at"],
    }
