"""The Prometheus endpoint: its own small aiohttp server on the configured address.

Separate from the HTTP API so Prometheus needs no API token and the endpoint can stay
on a private address while the API is exposed elsewhere (or the other way round).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from lightningd_py.config import split_host_port

__all__ = ["MetricsServer"]

_INDEX = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'


class MetricsServer:
    """Serves ``GET /metrics`` (text format, or OpenMetrics when asked; gzip when the
    scraper accepts it) from ``registry``.

    :param registry: the daemon's registry.
    :param listen: ``host:port``.
    """

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self.listen = listen
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve (returns once listening)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = split_host_port(self.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=_INDEX, content_type="text/html")
