"""Query-string models of the analytics endpoints.

Every model forbids unknown parameters; each validator names the parameter it rejects
(the API reports it as ``query.<name>``). Times are ISO 8601 or unix seconds; a time
without a zone is UTC.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .snapshot import parse_chan_id

__all__ = [
    "KINDS",
    "STATUSES",
    "ChannelQuery",
    "ExportQuery",
    "HistoryQuery",
    "ReportQuery",
    "StatsQuery",
    "decode_cursor",
    "encode_cursor",
]

KINDS = ("invoice", "payment", "forward", "rebalance")
STATUSES = (
    "open",
    "accepted",
    "settled",
    "canceled",
    "expired",
    "succeeded",
    "failed",
    "dry_run",
)
DEFAULT_WINDOW = timedelta(days=30)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _csv_of(value: str | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value is None or not value.strip():
        return ()
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(
            f"unknown {what} {bad[0]!r}; expected a comma-separated list of {', '.join(allowed)}"
        )
    return items


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _currency_code(value: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise ValueError("expected a three-letter ISO 4217 currency code, e.g. EUR")
    return code


class _Window(_Query):
    """``start`` and ``end`` (exclusive), both optional, ``end`` after ``start``."""

    start: datetime | None = Field(None, description="Window start, inclusive (ISO 8601 or unix seconds).")
    end: datetime | None = Field(None, description="Window end, exclusive (ISO 8601 or unix seconds).")

    @field_validator("start", "end")
    @classmethod
    def _zone(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if value is not None and start is not None and value <= start:
            raise ValueError("must be after start")
        return value


class StatsQuery(_Window):
    """A window (default: the 30 days before ``end``, which defaults to now) and an
    optional fiat currency."""

    currency: str | None = Field(None, description="ISO 4217 code (e.g. EUR) for fiat figures.")

    _currency = field_validator("currency")(_currency_code)

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The window as aware datetimes, defaults applied."""
        end = self.end or now or datetime.now(UTC)
        start = self.start or end - DEFAULT_WINDOW
        return start, end


class ChannelQuery(StatsQuery):
    """A window plus how many points the balance series may have."""

    points: int = Field(100, ge=1, le=2000, description="Most points in the balance-ratio series.")


class _HistoryFilter(_Window):
    kind: str | None = Field(None, description="Comma-separated kinds: invoice, payment, forward, rebalance.")
    status: str | None = Field(None, description="Comma-separated statuses, e.g. settled,succeeded.")
    chan_id: str | None = Field(
        None, description="Only forwards and rebalances through this channel (id or scid)."
    )

    @field_validator("kind")
    @classmethod
    def _kinds(cls, value: str | None) -> str | None:
        _csv_of(value, KINDS, "kind")
        return value

    @field_validator("status")
    @classmethod
    def _statuses(cls, value: str | None) -> str | None:
        _csv_of(value, STATUSES, "status")
        return value

    @field_validator("chan_id")
    @classmethod
    def _chan(cls, value: str | None) -> str | None:
        if value is not None:
            parse_chan_id(value)
        return value

    @property
    def kinds(self) -> tuple[str, ...]:
        return _csv_of(self.kind, KINDS, "kind")

    @property
    def statuses(self) -> tuple[str, ...]:
        return _csv_of(self.status, STATUSES, "status")

    @property
    def channel(self) -> int | None:
        return parse_chan_id(self.chan_id) if self.chan_id is not None else None

    def bounds(self) -> tuple[float, float]:
        """(start, end) as unix seconds; unbounded sides are infinite."""
        return (
            self.start.timestamp() if self.start else float("-inf"),
            self.end.timestamp() if self.end else float("inf"),
        )


class HistoryQuery(_HistoryFilter):
    """Filters plus keyset pagination: pass the response's ``next_cursor`` as ``cursor``."""

    limit: int = Field(100, ge=1, le=1000, description="Rows per page.")
    cursor: str | None = Field(None, description="The next_cursor of the previous page.")

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None:
            decode_cursor(value)
        return value


class ExportQuery(_HistoryFilter):
    """The filters of an export (the history's, without pagination)."""


class ReportQuery(_Query):
    """A calendar period (UTC) containing ``date``."""

    period: Literal["day", "week", "month", "year"] = Field(
        "month", description="day, week (ISO), month or year."
    )
    date: _dt.date | None = Field(
        None, description="A day inside the period (YYYY-MM-DD); default today (UTC)."
    )
    currency: str | None = Field(None, description="ISO 4217 code (e.g. EUR) for fiat figures.")

    _currency = field_validator("currency")(_currency_code)

    def window(self, today: _dt.date | None = None) -> tuple[datetime, datetime]:
        """The period's [start, end) as aware datetimes."""
        day = self.date or today or datetime.now(UTC).date()
        if self.period == "day":
            first, last = day, day + timedelta(days=1)
        elif self.period == "week":
            first = day - timedelta(days=day.weekday())
            last = first + timedelta(days=7)
        elif self.period == "month":
            first = day.replace(day=1)
            last = (
                first.replace(year=first.year + 1, month=1)
                if first.month == 12
                else first.replace(month=first.month + 1)
            )
        else:
            first, last = day.replace(month=1, day=1), day.replace(year=day.year + 1, month=1, day=1)
        return (
            datetime(first.year, first.month, first.day, tzinfo=UTC),
            datetime(last.year, last.month, last.day, tzinfo=UTC),
        )


def encode_cursor(row: tuple[float, str, int]) -> str:
    """An opaque cursor for the row after which the next page starts."""
    return (
        base64.urlsafe_b64encode(json.dumps(list(row), separators=(",", ":")).encode()).decode().rstrip("=")
    )


def decode_cursor(text: str) -> tuple[float, str, int]:
    """The row a cursor names. :raises ValueError: when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a cursor returned by this endpoint") from exc
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], int | float)
        or not isinstance(value[1], str)
        or not isinstance(value[2], int)
        or isinstance(value[2], bool)
    ):
        raise ValueError("not a cursor returned by this endpoint")
    return float(value[0]), value[1], value[2]
