"""Fiat prices of bitcoin: the ``ldp_exchange_rate`` hook first, then the configured
provider, cached for ``ttl`` seconds. A failure is reported (503 naming the provider),
never papered over with a stale or made-up price."""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from lightningd_py.web import ApiError

from .settings import ExchangeRateSettings

__all__ = ["BUILT_IN_PROVIDERS", "ExchangeRates", "asking_plugins", "extract_json_path"]

# name -> (url, json path); {currency} is upper case, {currency_lower} lower case.
BUILT_IN_PROVIDERS: dict[str, tuple[str, str]] = {
    "coingecko": (
        "https://api.coingecko.com/api/v3/simple/price?ids=bitcoin&vs_currencies={currency_lower}",
        "bitcoin.{currency_lower}",
    ),
    "coinbase": ("https://api.coinbase.com/v2/prices/BTC-{currency}/spot", "data.amount"),
    "kraken": ("https://api.kraken.com/0/public/Ticker?pair=XBT{currency}", "result.*.c[0]"),
    "mempool": ("https://mempool.space/api/v1/prices", "{currency}"),
}

# Set while this module asks the ldp_exchange_rate hook, so the http_api plugin's own
# implementation of that hook (which serves the provider to other plugins) stays out.
asking_plugins: contextvars.ContextVar[bool] = contextvars.ContextVar("asking_plugins", default=False)

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
CURRENCY = re.compile(r"^[A-Z]{3}$")


def extract_json_path(document: Any, path: str) -> Any:
    """Follow a dotted path with ``[n]`` list indices and ``*`` (the first value of an
    object) through a parsed JSON document; KeyError when a step is missing."""
    node = document
    for part in path.split("."):
        for name, index in _STEP.findall(part):
            if index:
                if not isinstance(node, list) or int(index) >= len(node):
                    raise KeyError(f"[{index}]")
                node = node[int(index)]
            elif name == "*":
                if not isinstance(node, dict) or not node:
                    raise KeyError("*")
                node = next(iter(node.values()))
            else:
                if not isinstance(node, dict) or name not in node:
                    raise KeyError(name)
                node = node[name]
    return node


class ExchangeRates:
    """Cached exchange rates.

    :param ask_plugins: ``currency -> Decimal | None``, the ``ldp_exchange_rate`` hook.
    """

    def __init__(
        self,
        settings: ExchangeRateSettings,
        ask_plugins: Callable[[str], Awaitable[Decimal | None]],
    ) -> None:
        self.settings = settings
        self._ask_plugins = ask_plugins
        self._cache: dict[str, tuple[Decimal, float, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def provider_name(self) -> str:
        s = self.settings
        if s.provider == "custom":
            return f"custom ({s.url})"
        return s.provider

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def rate(self, currency: str) -> tuple[Decimal, str]:
        """The price of 1 BTC in ``currency`` and where it came from.

        :raises ApiError: 503 naming the provider when no rate can be had.
        """
        now = time.monotonic()
        cached = self._cache.get(currency)
        if cached is not None and cached[1] > now:
            return cached[0], cached[2]
        lock = self._locks.setdefault(currency, asyncio.Lock())
        async with lock:
            cached = self._cache.get(currency)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0], cached[2]
            token = asking_plugins.set(True)
            try:
                value = await self._ask_plugins(currency)
            finally:
                asking_plugins.reset(token)
            source = "plugin"
            if value is None:
                value = await self._fetch(currency)
                source = self.provider_name
            else:
                value = _positive(value, "a plugin's ldp_exchange_rate")
            self._cache[currency] = (value, time.monotonic() + self.settings.ttl, source)
            return value, source

    async def provider_rate(self, currency: str) -> Decimal:
        """The configured provider's price (cached), for other plugins through the
        ``ldp_exchange_rate`` hook.

        :raises ApiError: 503 naming the provider.
        """
        now = time.monotonic()
        cached = self._cache.get(currency)
        if cached is not None and cached[1] > now:
            return cached[0]
        value = await self._fetch(currency)
        self._cache[currency] = (value, time.monotonic() + self.settings.ttl, self.provider_name)
        return value

    async def _fetch(self, currency: str) -> Decimal:
        s = self.settings
        if s.provider == "none":
            raise ApiError(
                503,
                "exchange_rate_unavailable",
                f"no exchange rate for {currency}: no plugin supplies one and no provider is configured",
                "fiat_currency",
            )
        if s.provider == "custom":
            url_t, path_t = s.url or "", s.json_path or ""
        else:
            url_t, path_t = BUILT_IN_PROVIDERS[s.provider]
            url_t, path_t = s.url or url_t, s.json_path or path_t
        fill = {"currency": currency, "currency_lower": currency.lower()}
        url, path = url_t.format(**fill), path_t.format(**fill)
        name = self.provider_name
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=s.timeout))
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise ApiError(
                        503,
                        "exchange_rate_unavailable",
                        f"exchange-rate provider {name} answered HTTP {resp.status} for {currency}",
                        "fiat_currency",
                    )
                document = json.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiError(
                503,
                "exchange_rate_unavailable",
                f"exchange-rate provider {name} failed for {currency}: {type(exc).__name__}",
                "fiat_currency",
            ) from exc
        try:
            raw = extract_json_path(document, path)
        except KeyError as exc:
            raise ApiError(
                503,
                "exchange_rate_unavailable",
                f"exchange-rate provider {name} has no {currency} price at {path!r}",
                "fiat_currency",
            ) from exc
        try:
            return _positive(raw, f"exchange-rate provider {name}")
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(
                503,
                "exchange_rate_unavailable",
                f"exchange-rate provider {name} sent an unusable price",
                "fiat_currency",
            ) from exc


def _positive(raw: Any, source: str) -> Decimal:
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError) as exc:
        raise ApiError(
            503, "exchange_rate_unavailable", f"{source} sent a price that is not a number", "fiat_currency"
        ) from exc
    if not value.is_finite() or value <= 0:
        raise ApiError(
            503, "exchange_rate_unavailable", f"{source} sent a price that is not positive", "fiat_currency"
        )
    return value
