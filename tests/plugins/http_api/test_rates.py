"""Exchange rates from a local rate server: JSON paths, built-in formats, TTL cache,
plugin answers first, and failures reported as 503 naming the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from lightningd_py.plugins.http_api.rates import (
    BUILT_IN_PROVIDERS,
    ExchangeRates,
    asking_plugins,
    extract_json_path,
)
from lightningd_py.plugins.http_api.settings import ExchangeRateSettings

from lightningd_py.demo import free_port
from lightningd_py.web import ApiError

pytestmark = pytest.mark.anyio


class RateServer:
    def __init__(self) -> None:
        self.hits = 0
        self.status = 200
        self.document: Any = {"data": {"amount": "50000.25", "currency": "EUR"}}

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.document)


@pytest.fixture
async def rate_server() -> AsyncIterator[tuple[RateServer, str]]:
    state = RateServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def no_plugin(currency: str) -> Decimal | None:
    return None


def test_json_paths() -> None:
    doc = {"result": {"XXBTZEUR": {"c": ["61000.1", "0.5"]}}, "bitcoin": {"eur": 61000}}
    assert extract_json_path(doc, "result.*.c[0]") == "61000.1"
    assert extract_json_path(doc, "bitcoin.eur") == 61000
    with pytest.raises(KeyError):
        extract_json_path(doc, "result.*.d[0]")
    with pytest.raises(KeyError):
        extract_json_path(doc, "result.*.c[5]")
    assert set(BUILT_IN_PROVIDERS) == {"coingecko", "coinbase", "kraken", "mempool"}


async def test_custom_provider_cached_for_ttl(rate_server: tuple[RateServer, str]) -> None:
    server, url = rate_server
    rates = ExchangeRates(
        ExchangeRateSettings(
            provider="custom", url=f"{url}/price/{{currency}}", json_path="data.amount", ttl=60
        ),
        no_plugin,
    )
    try:
        assert await rates.rate("EUR") == (Decimal("50000.25"), f"custom ({url}/price/{{currency}})")
        await rates.rate("EUR")
        assert server.hits == 1
    finally:
        await rates.close()


async def test_built_in_format_against_local_url(rate_server: tuple[RateServer, str]) -> None:
    server, url = rate_server
    server.document = {"bitcoin": {"usd": 70123.5}}
    rates = ExchangeRates(ExchangeRateSettings(provider="coingecko", url=f"{url}/simple"), no_plugin)
    try:
        assert (await rates.rate("USD"))[0] == Decimal("70123.5")
    finally:
        await rates.close()


async def test_failures_name_the_provider(rate_server: tuple[RateServer, str]) -> None:
    server, url = rate_server
    settings = ExchangeRateSettings(provider="custom", url=f"{url}/p", json_path="data.amount")
    for status, document in ((500, None), (200, {"data": {}}), (200, {"data": {"amount": "-3"}})):
        server.status = status
        server.document = document
        rates = ExchangeRates(settings, no_plugin)
        try:
            with pytest.raises(ApiError) as info:
                await rates.rate("EUR")
        finally:
            await rates.close()
        assert info.value.status == 503
        assert "custom" in info.value.message and info.value.field == "fiat_currency"
    unreachable = ExchangeRates(
        ExchangeRateSettings(
            provider="custom", url=f"http://127.0.0.1:{free_port()}/", json_path="x", timeout=2
        ),
        no_plugin,
    )
    try:
        with pytest.raises(ApiError, match="failed for EUR"):
            await unreachable.rate("EUR")
    finally:
        await unreachable.close()


async def test_plugin_answer_wins(rate_server: tuple[RateServer, str]) -> None:
    server, url = rate_server

    async def plugin(currency: str) -> Decimal | None:
        return Decimal("42000") if currency == "CHF" else None

    rates = ExchangeRates(
        ExchangeRateSettings(provider="custom", url=f"{url}/p", json_path="data.amount"), plugin
    )
    try:
        assert await rates.rate("CHF") == (Decimal("42000"), "plugin")
        assert server.hits == 0
        assert (await rates.rate("EUR"))[0] == Decimal("50000.25")
    finally:
        await rates.close()


async def test_provider_serves_other_plugins_without_asking_itself(
    rate_server: tuple[RateServer, str],
) -> None:
    server, url = rate_server
    seen: list[bool] = []

    async def plugin(currency: str) -> Decimal | None:
        seen.append(asking_plugins.get())
        return None

    rates = ExchangeRates(
        ExchangeRateSettings(provider="custom", url=f"{url}/p", json_path="data.amount"), plugin
    )
    try:
        assert await rates.provider_rate("EUR") == Decimal("50000.25")
        assert seen == []  # the provider path never asks the hook
        assert (await rates.rate("USD"))[0] == Decimal("50000.25")
        assert seen == [True]  # the http_api's own hookimpl sees the flag and stays out
        await rates.provider_rate("EUR")
        assert server.hits == 2
    finally:
        await rates.close()
