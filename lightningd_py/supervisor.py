"""The supervisor: one anyio task group holding the database writer, the LND link and
its stream readers, one worker per plugin, plugin services, signals and sd_notify."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry

from .config import Config, load_config, reload_config
from .coremetrics import register_core_metrics
from .daemon import NodeStatus
from .errors import ConfigError, LdpError, PluginError, StoreError
from .events import NodeStateChanged
from .journal import MIGRATIONS as JOURNAL_MIGRATIONS
from .journal import Journal
from .lnd.expiry import ExpiryTracker
from .lnd.link import LndLink, Stubs
from .lnd.streams import run_streams
from .logs import configure_logging
from .notify import Notifier
from .pluginhost import PluginHost, PluginManager, create_plugin_manager, plugin_schemas
from .store import Migration, Store

__all__ = ["Supervisor", "load", "main"]

log = structlog.get_logger("lightningd_py")

EXIT_CONFIG = 2
EXIT_PLUGIN = 3
EXIT_STORE = 4
STARTUP_TIMEOUT = 60.0
# Upgrading a large database at start can outlast systemd's TimeoutStartSec (the
# journal's digest migration took 4.3 s per 200,000 invoices): while it runs, the daemon
# asks systemd for this many more seconds, again before each extension runs out.
UPGRADE_EXTEND = 30.0
# Seconds without a database commit after which a burst counts as over.
TRIM_QUIET = 1.0
# glibc gives each thread that allocates (the database writer, readers, gRPC's and
# anyio's workers) an arena of its own, up to 8 per core, and the pages each keeps after
# a burst add up. Capped at 2, the daemon was 2.7 MB smaller after 300,000 events (three
# runs each) at no cost in speed. MALLOC_ARENA_MAX or GLIBC_TUNABLES still decide.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def load(config_path: Path) -> tuple[PluginManager, Config]:
    """Load every plugin and validate the config with their schemas.

    Raises ConfigError for a bad config, PluginError for an enabled plugin that failed
    to load while ``[core] plugin_failure = "refuse"``.
    """
    pm = create_plugin_manager()
    # Tables of plugins that failed to load are accepted unvalidated, so the policy
    # below (not "no such plugin") decides.
    config = load_config(config_path, plugin_schemas(pm), unavailable=_unavailable(pm))
    for failure in pm.failures:
        if not config.enabled.get(failure.name, True):
            continue
        if config.core.plugin_failure == "refuse":
            raise PluginError(
                failure.name,
                f'{failure.reason} (set [core] plugin_failure = "skip" to start without it)',
            )
        log.error("plugin not loaded; starting without it", plugin=failure.name, reason=failure.reason)
    return pm, config


def _unavailable(pm: PluginManager) -> dict[str, str]:
    return {f.name: f.reason for f in pm.failures}


def main(config_path: Path | str) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit status."""
    _limit_malloc_arenas()
    config_path = Path(config_path)
    configure_logging(_peek_log_format(config_path), "info")
    try:
        pm, config = load(config_path)
    except ConfigError as exc:
        print(f"lightningd-py: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as exc:
        print(f"lightningd-py: {exc}", file=sys.stderr)
        return EXIT_PLUGIN
    configure_logging(config.core.log_format, config.core.log_level)
    supervisor = Supervisor(config, pm)
    try:
        return anyio.run(supervisor.run, backend="asyncio")
    except KeyboardInterrupt:
        return 0


def _libc(name: str) -> Any | None:
    """The C library's function ``name``, or None where it has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at ``MALLOC_ARENAS``, before the daemon starts any thread.

    Leaves the C library's own choice where the environment makes one
    (``MALLOC_ARENA_MAX``, or ``glibc.malloc.arena_max`` in ``GLIBC_TUNABLES``).
    """
    if "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    mallopt = _libc("mallopt")
    if mallopt is None:
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    trim = _libc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def _peek_log_format(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            fmt = tomllib.load(fh).get("core", {}).get("log_format", "auto")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return "auto"
    return fmt if fmt in ("auto", "json", "console") else "auto"


class Supervisor:
    """Starts everything in order, reports readiness, and tears down in reverse."""

    def __init__(self, config: Config, pm: PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.notifier = Notifier()
        self.node = NodeStatus(since=time.time())
        self._last_state: tuple[str, bool] | None = None
        self.journal: Journal | None = None
        self.host: PluginHost | None = None
        self.ready_at: float | None = None

    async def run(self) -> int:
        started = time.monotonic()
        db_path = self.config.core.state_dir / self.config.core.database
        store = Store(db_path)
        try:
            store.open()
            await self._upgrade(store, [("journal", JOURNAL_MIGRATIONS)])
            self.journal = journal = Journal(store)
            journal.load()
        except StoreError as exc:
            log.error("cannot open the database", error=str(exc))
            return EXIT_STORE
        registry = CollectorRegistry(auto_describe=True)
        link = LndLink(self.config.lnd, self.node, self._on_node_status)
        self.host = host = PluginHost(
            config=self.config,
            pm=self.pm,
            store=store,
            journal=journal,
            registry=registry,
            node=self.node,
            lnd=link.client,
        )
        try:
            await self._upgrade(store, list(host.hooks.each_sync("ldp_migrations")))
        except (PluginError, StoreError) as exc:
            log.error("migrations failed", error=str(exc))
            await store.close()
            return EXIT_STORE
        register_core_metrics(host, registry)
        expiry = ExpiryTracker(journal, self.config.lnd)
        status = 0
        async with anyio.create_task_group() as root:
            await root.start(store.run)
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self._signals, tg.cancel_scope)
                    try:
                        with anyio.fail_after(STARTUP_TIMEOUT):
                            await self._start_plugins(host)
                    except PluginError as exc:
                        print(f"lightningd-py: {exc}", file=sys.stderr)
                        log.error("plugin failed to start", error=str(exc))
                        status = EXIT_PLUGIN
                        tg.cancel_scope.cancel()
                    else:
                        self._start_services(tg, host, link, journal, expiry)
                        self.ready_at = time.monotonic()
                        self.notifier.send("READY=1", f"STATUS={self.node.detail}")
                        self.notifier.last_status = self.node.detail
                        log.info(
                            "ready",
                            seconds=round(self.ready_at - started, 3),
                            plugins=list(host.runtimes),
                            database=str(db_path),
                        )
            finally:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(host, store)
                root.cancel_scope.cancel()
        await store.close()
        self.notifier.close()
        log.info("stopped")
        return status

    def _start_services(
        self,
        tg: anyio.abc.TaskGroup,
        host: PluginHost,
        link: LndLink,
        journal: Journal,
        expiry: ExpiryTracker,
    ) -> None:
        for name in list(host.runtimes):
            tg.start_soon(host.run_worker, name, name=f"worker:{name}")
        for plugin, services in host.hooks.each_sync("ldp_background_tasks"):
            for service_name, fn in services or ():
                tg.start_soon(self._service, plugin, service_name, fn, name=f"{plugin}:{service_name}")

        async def on_active(stubs: Stubs) -> None:
            await run_streams(stubs, journal, self.config.lnd, self.node, expiry)

        tg.start_soon(link.run, on_active, name="lnd-link")
        tg.start_soon(self._watchdog, host.store_backend, name="watchdog")
        tg.start_soon(self._release_memory_after_bursts, host.store_backend, journal, name="release-memory")

    async def _upgrade(self, store: Store, steps: list[tuple[str, list[Migration] | None]]) -> None:
        """Apply each owner's pending migrations, in order, in a worker thread. When tables
        that exist are to change (not on a new database, whose tables start empty), STATUS
        says so while they run and systemd is asked for more start-up time."""
        owners = [(owner, list(migrations or [])) for owner, migrations in steps]
        upgrading = [
            owner
            for owner, migrations in owners
            if (version := store.version(owner)) and any(m.version > version for m in migrations)
        ]

        def migrate() -> None:
            for owner, migrations in owners:
                store.migrate(owner, migrations)

        if not upgrading:
            migrate()  # a new database's empty tables, or nothing: quick
            return

        async def ask_for_time() -> None:
            while True:
                self.notifier.send(
                    f"EXTEND_TIMEOUT_USEC={int(UPGRADE_EXTEND * 1_000_000)}", "STATUS=upgrading the database"
                )
                await anyio.sleep(UPGRADE_EXTEND / 3)

        log.info("upgrading the database", owners=upgrading)
        started = time.monotonic()
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_for_time)
            try:
                await anyio.to_thread.run_sync(migrate)
            except Exception as exc:  # raised as itself, not inside the task group's
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        log.info("database upgraded", owners=upgrading, seconds=round(time.monotonic() - started, 1))

    async def _start_plugins(self, host: PluginHost) -> None:
        for plugin_name, impl in host.hooks._impls("ldp_startup"):
            try:
                await host.hooks._call(plugin_name, impl, {})
            except Exception as exc:
                if self.config.core.plugin_failure == "refuse":
                    raise PluginError(plugin_name, f"startup failed: {type(exc).__name__}: {exc}") from exc
                log.error("plugin failed to start; disabled", plugin=plugin_name, exc_info=exc)
                host.disable(plugin_name)
        for plugin_name, _ in host.hooks.each_sync("ldp_register_metrics", registry=host.registry):
            log.debug("metrics registered", plugin=plugin_name)
        host.prepare_workers()

    async def _shutdown(self, host: PluginHost, store: Store) -> None:
        self.notifier.send("STOPPING=1")
        log.info("stopping")
        with anyio.move_on_after(self.config.core.shutdown_grace):
            for plugin_name, impl in reversed(host.hooks._impls("ldp_shutdown")):
                try:
                    await host.hooks._call(plugin_name, impl, {})
                except Exception as exc:
                    host.record_error(plugin_name, "ldp_shutdown", exc)
            try:
                await store.flush()
            except StoreError as exc:
                log.error("final database flush failed", error=str(exc))

    async def _service(self, plugin: str, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await fn()
                log.info("plugin service finished", plugin=plugin, service=name)
                return
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                assert self.host is not None
                self.host.record_error(plugin, f"service {name}", exc)
                attempt = 1 if time.monotonic() - started > 60 else attempt + 1
                delay = min(60.0, 0.5 * 2 ** (attempt - 1))
                log.error("plugin service crashed; restarting", plugin=plugin, service=name, retry_in=delay)
                await anyio.sleep(delay)

    async def _watchdog(self, store: Store) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            # Pinged from the event loop itself, and only while the database works.
            if store.failed is None:
                self.notifier.send("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _release_memory_after_bursts(self, store: Store, journal: Journal) -> None:
        # The journal keeps recent events decoded, sqlite each connection's page cache,
        # and glibc the pages a burst freed (gRPC buffers, parsed messages, large
        # Python blocks), unless asked: give them back once it is over.
        trim = _malloc_trim()
        units = store.stats.units
        busy = False
        while True:
            await anyio.sleep(TRIM_QUIET)
            if store.stats.units != units:
                units = store.stats.units
                busy = True
            elif busy:
                busy = False
                journal.release_memory()
                await store.release_memory()
                if trim is not None:  # glibc only (not musl or macOS)
                    await anyio.to_thread.run_sync(trim)

    async def _signals(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            # Handlers are in place before READY=1 goes out.
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self._reload()
                    continue
                log.info("signal received; shutting down", signal=signal.Signals(signum).name)
                scope.cancel()
                return

    async def _reload(self) -> None:
        assert self.host is not None
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new, needs_restart = reload_config(
                self.config, plugin_schemas(self.pm), unavailable=_unavailable(self.pm)
            )
        except ConfigError as exc:
            log.error("config reload rejected; keeping the running config", error=str(exc))
            self.notifier.send("READY=1")
            return
        self.config = new
        self.host.config = new
        for name, rt in self.host.runtimes.items():
            rt.daemon.settings = new.plugins.get(name)
        configure_logging(new.core.log_format, new.core.log_level)
        if needs_restart:
            log.warning("config reloaded; these settings take effect after a restart", settings=needs_restart)
        else:
            log.info("config reloaded")
        await self.host.hooks.each("ldp_config_reloaded")
        self.notifier.send("READY=1")

    async def _on_node_status(self, node: NodeStatus) -> None:
        self.notifier.status(node.detail)
        key = (node.state, node.reachable)
        if key == self._last_state or self.journal is None:
            return
        self._last_state = key
        try:
            await self.journal.append(
                [NodeStateChanged(state=node.state, reachable=node.reachable, detail=node.detail)]
            )
        except LdpError as exc:
            log.error("could not journal the node state", error=str(exc))
