"""The ``[plugins.http_api]`` config table."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lightningd_py.config import HostPort, PluginSettings

__all__ = ["ApiToken", "ExchangeRateSettings", "HttpApiSettings", "RateLimit", "parse_rate_limit"]

_LIMIT = re.compile(r"^\s*(\d+)\s*(?:/\s*(\d*)\s*([smhd]))?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RateLimit(BaseModel):
    """``requests`` per ``period`` seconds; ``requests == 0`` means unlimited."""

    model_config = ConfigDict(frozen=True)

    requests: int
    period: float


def parse_rate_limit(text: str) -> RateLimit:
    """Read ``"100/15m"``, ``"5/h"``, ``"10/30s"`` or ``"0"`` (unlimited)."""
    m = _LIMIT.match(text)
    if m is None or (m.group(1) != "0" and m.group(3) is None):
        raise ValueError(f"expected 'N/period' such as '100/15m', '5/1h' or '0' for unlimited, got {text!r}")
    requests = int(m.group(1))
    if requests == 0:
        return RateLimit(requests=0, period=1)
    count = int(m.group(2) or "1")
    if count == 0:
        raise ValueError(f"the period of {text!r} must be longer than zero")
    return RateLimit(requests=requests, period=count * _UNIT_SECONDS[m.group(3)])


class ApiToken(BaseModel):
    """One API client: the SHA-256 of its bearer token and its role.

    Tokens themselves are never stored: ``lightningd-py init`` prints a new token once
    and writes ``sha256 = hashlib.sha256(token.encode()).hexdigest()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(repr=False, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token")
    role: Literal["admin", "invoice", "readonly"]


class ExchangeRateSettings(BaseModel):
    """Where fiat prices of bitcoin come from (after the ``ldp_exchange_rate`` hook).

    ``provider`` is one of the built-in formats, or ``"custom"`` with ``url`` and
    ``json_path``; ``{currency}`` / ``{currency_lower}`` in either are replaced.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["coingecko", "coinbase", "kraken", "mempool", "custom", "none"] = "coingecko"
    url: str | None = Field(None, pattern=r"^https?://")
    json_path: str | None = None
    ttl: float = Field(60.0, gt=0, le=86400, description="seconds a fetched rate is reused")
    timeout: float = Field(5.0, gt=0, le=60)

    @field_validator("json_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value


_DEFAULT_LIMITS = {"general": "100/15m", "channels": "10/15m", "rebalance": "5/1h", "public": "300/15m"}


class HttpApiSettings(PluginSettings):
    """``[plugins.http_api]``."""

    listen: HostPort = Field("127.0.0.1:8080", json_schema_extra={"restart": True})
    tokens: list[ApiToken] = Field(default_factory=list)
    rate_limits: dict[str, str] = Field(
        default_factory=lambda: dict(_DEFAULT_LIMITS),
        description="per route group: 'N/period' (s, m, h, d) or '0' for unlimited; "
        "groups not listed use 'general'",
    )
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    default_invoice_expiry: int = Field(3600, ge=60, le=365 * 86400)
    max_wait_seconds: float = Field(
        300.0, gt=0, le=3600, description="longest long-poll a client may ask for"
    )
    sse_heartbeat: float = Field(15.0, gt=0, le=300)
    idempotency_ttl: float = Field(86400.0, ge=60, description="seconds an Idempotency-Key is remembered")
    exchange_rates: ExchangeRateSettings = Field(default_factory=ExchangeRateSettings)

    @field_validator("rate_limits")
    @classmethod
    def _limits(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for group, text in value.items():
            try:
                parse_rate_limit(text)
            except ValueError as exc:
                problems.append(f"{group}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        merged = dict(_DEFAULT_LIMITS)
        merged.update(value)
        return merged

    @field_validator("tokens")
    @classmethod
    def _unique(cls, value: list[ApiToken]) -> list[ApiToken]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"token names must be unique; repeated: {', '.join(dupes)}")
        hashes = [t.sha256 for t in value]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two tokens have the same sha256")
        return value

    def limits(self) -> dict[str, RateLimit]:
        return {group: parse_rate_limit(text) for group, text in self.rate_limits.items()}
