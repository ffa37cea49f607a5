"""ldp-loyalty: loyalty points for paying customers, a third-party lightningd-py plugin.

When an invoice is settled and its memo names a customer (``customer:alice`` by
default), the customer earns one point per ``msat_per_point`` millisatoshi paid. Points
are kept in the plugin's own table and served at ``GET /v1/loyalty/customers/{customer}``;
each award is also announced to every plugin (``ldp_event``) and on the HTTP API's event
stream as a ``loyalty.points_awarded`` ``CustomEvent``.

Everything is imported from ``lightningd_py.api``, the stable plugin API.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from lightningd_py import api

# Refuse to load on a daemon whose plugin API is older than what this plugin uses.
api.require("1.0")

__all__ = [
    "LoyaltyBalance",
    "LoyaltySettings",
    "ldp_config_schema",
    "ldp_health",
    "ldp_invoice_event",
    "ldp_migrations",
    "ldp_register_routes",
]

AWARDED = "loyalty.points_awarded"


class LoyaltySettings(api.PluginSettings):
    """The ``[plugins.loyalty]`` table."""

    msat_per_point: int = Field(1000, ge=1, description="millisatoshi paid per point earned")
    min_amount_msat: int = Field(0, ge=0, description="smaller payments earn nothing")
    customer_pattern: str = Field(
        r"customer:([A-Za-z0-9_.-]{1,64})",
        description="regular expression searched in the invoice memo; group 1 is the customer id",
    )

    @field_validator("customer_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if compiled.groups < 1:
            raise ValueError("needs a capture group for the customer id, e.g. 'customer:(\\w+)'")
        return value


class LoyaltyBalance(BaseModel):
    """What ``GET /v1/loyalty/customers/{customer}`` answers."""

    customer: str
    points: int
    payments: int
    paid_msat: int


@api.hookimpl
def ldp_config_schema() -> type[LoyaltySettings]:
    return LoyaltySettings


@api.hookimpl
def ldp_migrations() -> list[api.Migration]:
    return [
        api.Migration(
            version=1,
            sql="""
            CREATE TABLE loyalty_awards (
                payment_hash TEXT PRIMARY KEY,
                customer TEXT NOT NULL,
                amount_msat INTEGER NOT NULL,
                points INTEGER NOT NULL,
                event_id INTEGER NOT NULL,
                settled_at INTEGER NOT NULL
            );
            CREATE INDEX loyalty_awards_customer ON loyalty_awards (customer);
            """,
        )
    ]


@api.hookimpl
async def ldp_invoice_event(daemon: api.Daemon, event: api.InvoiceEvent) -> None:
    if not isinstance(event, api.InvoiceSettled):
        return
    settings = daemon.settings
    assert isinstance(settings, LoyaltySettings)
    found = re.search(settings.customer_pattern, event.memo)
    if found is None or event.amt_paid_msat < settings.min_amount_msat:
        return
    customer = found.group(1)
    points = event.amt_paid_msat // settings.msat_per_point
    # Events arrive at least once: the payment hash as primary key makes a redelivery a
    # no-op. The write commits before the daemon moves this plugin's cursor past the event.
    await daemon.store.execute(
        "INSERT OR IGNORE INTO loyalty_awards"
        " (payment_hash, customer, amount_msat, points, event_id, settled_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event.payment_hash, customer, event.amt_paid_msat, points, event.id, event.settle_date),
    )
    # The key makes the journal drop a second announcement of the same award.
    await daemon.emit(
        api.CustomEvent(
            name=AWARDED,
            key=event.payment_hash,
            data={"customer": customer, "points": points, "payment_hash": event.payment_hash},
        )
    )
    daemon.log.info("points awarded", customer=customer, points=points)


@api.hookimpl
def ldp_register_routes(daemon: api.Daemon, router: api.RouteRegistry) -> None:
    async def balance(request: api.ApiRequest) -> LoyaltyBalance:
        customer = request.path["customer"]
        row = await daemon.store.fetchone(
            "SELECT COUNT(*) AS payments, COALESCE(SUM(points), 0) AS points,"
            " COALESCE(SUM(amount_msat), 0) AS paid_msat FROM loyalty_awards WHERE customer = ?",
            (customer,),
        )
        if row is None or row["payments"] == 0:
            message = f"customer {customer!r} has no points yet"
            raise api.ApiError(404, "unknown_customer", message, "customer")
        return LoyaltyBalance(
            customer=customer, points=row["points"], payments=row["payments"], paid_msat=row["paid_msat"]
        )

    router.add(
        "GET",
        "/v1/loyalty/customers/{customer}",
        balance,
        role="readonly",
        summary="A customer's loyalty points",
        response=LoyaltyBalance,
        tags=("loyalty",),
        responses={404: "the customer has no points yet"},
    )


@api.hookimpl
def ldp_health(daemon: api.Daemon) -> dict[str, Any]:
    # Answer from memory: the plugin is healthy while its worker keeps up with the journal.
    plugin = daemon.status()["plugins"].get(daemon.name, {})
    return {"ok": not plugin.get("retrying", False), "errors": plugin.get("errors", 0)}
