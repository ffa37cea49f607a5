"""http_api: the daemon's HTTP API (aiohttp).

Serves every route any plugin registers through ``ldp_register_routes`` and owns, for all
of them, bearer-token authentication with roles, per-client rate limits, request
validation, the error shape ``{"error": {"code", "message", "field"}}`` and the OpenAPI
document. Its own endpoints: invoices (backed by the invoice_tracker plugin, imported
from ``lightningd_py.plugins.invoice_tracker.records``; they answer 503 when that plugin
is disabled), payments, channels, node, balances, decode, health and the SSE event
stream. See docs/http-api.md.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio

from lightningd_py.hookspecs import hookimpl
from lightningd_py.store import Migration
from lightningd_py.web import ApiError, Route, RouteRegistry

from .auth import RateLimiter, TokenAuthenticator
from .rates import CURRENCY, ExchangeRates, asking_plugins
from .routes_invoices import IDEMPOTENCY_SQL, add_invoice_routes
from .routes_node import PAYMENTS_SQL, add_node_routes, record_payment_event
from .routes_system import add_system_routes
from .server import ApiServer
from .settings import HttpApiSettings

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon
    from lightningd_py.events import PaymentEvent

__all__ = [
    "HttpApi",
    "HttpApiSettings",
    "ldp_background_tasks",
    "ldp_config_reloaded",
    "ldp_config_schema",
    "ldp_exchange_rate",
    "ldp_health",
    "ldp_migrations",
    "ldp_payment_event",
    "ldp_register_routes",
    "ldp_shutdown",
    "ldp_startup",
]


class HttpApi:
    """The running API of one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings: HttpApiSettings = daemon.settings or HttpApiSettings()  # type: ignore[assignment]
        self.routes: list[Route] = []
        self.rates = ExchangeRates(self.settings.exchange_rates, self._ask_rate_plugins)
        self.server: ApiServer | None = None

    async def _ask_rate_plugins(self, currency: str) -> Decimal | None:
        return await self.daemon.hooks.first("ldp_exchange_rate", currency=currency)

    async def start(self) -> None:
        registry = RouteRegistry()
        # Each plugin registers through a view naming it, so a clash or an OpenAPI tag
        # says whose route it is.
        await self.daemon.hooks.each_named(
            "ldp_register_routes", per_plugin=lambda name: {"router": registry.for_owner(name)}
        )
        self.routes = list(registry.routes)
        self.server = ApiServer(
            routes=self.routes,
            authenticator=TokenAuthenticator(self.settings.tokens),
            limiter=RateLimiter(self.settings.limits()),
            max_body_bytes=self.settings.max_body_bytes,
            log=self.daemon.log,
        )
        await self.server.start(self.settings.listen)
        self.daemon.log.info(
            "HTTP API listening",
            listen=self.settings.listen,
            routes=len(self.routes),
            tokens=len(self.settings.tokens),
        )

    def reload(self) -> None:
        """Apply reloadable settings (tokens, limits, rates); the listen address needs a restart."""
        old = self.settings
        self.settings = self.daemon.settings or HttpApiSettings()  # type: ignore[assignment]
        self.rates.settings = self.settings.exchange_rates
        if self.server is not None:
            self.server.auth = TokenAuthenticator(self.settings.tokens)
            # Clients keep their used budgets unless the limits themselves changed.
            if self.settings.rate_limits != old.rate_limits:
                self.server.limiter = RateLimiter(self.settings.limits())

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        await self.rates.close()

    async def prune_idempotency_keys(self) -> None:
        """Service: forget Idempotency-Keys older than ``idempotency_ttl``."""
        while True:
            cutoff = time.time() - self.settings.idempotency_ttl
            await self.daemon.store.execute("DELETE FROM http_api_idempotency WHERE created < ?", (cutoff,))
            await anyio.sleep(min(3600.0, self.settings.idempotency_ttl / 4))


def _api(daemon: Daemon) -> HttpApi:
    """The HttpApi of this daemon handle, kept in ``daemon.state`` (one per daemon)."""
    api = daemon.state.get("api")
    if api is None:
        api = daemon.state["api"] = HttpApi(daemon)
    return api


@hookimpl
def ldp_config_schema() -> type[HttpApiSettings]:
    return HttpApiSettings


@hookimpl
def ldp_migrations() -> list[Migration]:
    return [Migration(version=1, sql=IDEMPOTENCY_SQL + PAYMENTS_SQL)]


# Last, so every other plugin has started (and built what its routes use) before its
# ldp_register_routes is called; the socket is still bound before READY=1.
@hookimpl(trylast=True)
async def ldp_startup(daemon: Daemon) -> None:
    await _api(daemon).start()


@hookimpl
def ldp_register_routes(daemon: Daemon, router: RouteRegistry) -> None:
    api = _api(daemon)
    add_system_routes(api, router)
    add_invoice_routes(api, router)
    add_node_routes(api, router)


@hookimpl
def ldp_background_tasks(daemon: Daemon) -> Iterable[tuple[str, Callable[[], Awaitable[None]]]]:
    return [("idempotency-pruner", _api(daemon).prune_idempotency_keys)]


@hookimpl
async def ldp_payment_event(daemon: Daemon, event: PaymentEvent) -> None:
    await record_payment_event(_api(daemon), event)


# Last: plugins that know better answer first; then the configured provider serves
# every plugin that needs a price (analytics in fiat, say), not only invoice creation.
@hookimpl(trylast=True)
async def ldp_exchange_rate(daemon: Daemon, currency: str) -> Decimal | None:
    api = daemon.state.get("api")
    if api is None or asking_plugins.get() or not CURRENCY.match(currency):
        return None
    try:
        return await api.rates.provider_rate(currency)
    except ApiError as exc:
        daemon.log.warning("exchange rate unavailable", currency=currency, reason=exc.message)
        return None


@hookimpl
def ldp_health(daemon: Daemon) -> dict[str, object] | None:
    api = daemon.state.get("api")
    if api is None or api.server is None:
        return {"ok": False, "listening": False}
    return {
        "ok": True,
        "listen": api.settings.listen,
        "routes": len(api.routes),
        "exchange_rate_provider": api.rates.provider_name,
    }


@hookimpl
def ldp_config_reloaded(daemon: Daemon) -> None:
    _api(daemon).reload()


# First (startup runs last, shutdown in reverse): stop taking requests before the
# plugins serving them close.
@hookimpl(trylast=True)
async def ldp_shutdown(daemon: Daemon) -> None:
    api = daemon.state.pop("api", None)
    if api is not None:
        await api.stop()
