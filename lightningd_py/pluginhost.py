"""Finding, loading and running plugins.

Built-ins and third-party plugins are found the same way, through the
``lightningd_py`` entry-point group. Each enabled plugin gets a ``Daemon`` handle, a
worker task that feeds it journal events after its durable cursor, and isolation: its
exceptions and slowness are its own.
"""

from __future__ import annotations

import importlib.metadata as metadata
import inspect
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pluggy
import structlog
from anyio.abc import TaskStatus

from . import hookspecs
from .daemon import Daemon
from .errors import PluginError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .config import Config
    from .daemon import NodeStatus
    from .journal import Journal
    from .lnd.client import LndClient
    from .store import Store

__all__ = [
    "EVENT_HOOKS",
    "HookRunner",
    "LoadFailure",
    "PluginHost",
    "create_plugin_manager",
    "describe_plugins",
    "plugin_schemas",
]

log = structlog.get_logger("lightningd_py.pluginhost")

ENTRY_POINT_GROUP = "lightningd_py"
OWN_DISTRIBUTION = "lightningd-py"
EVENT_HOOKS = (
    "ldp_invoice_event",
    "ldp_payment_event",
    "ldp_channel_event",
    "ldp_forward_event",
    "ldp_peer_event",
    "ldp_backup_event",
    "ldp_node_state",
    "ldp_event",
    "ldp_event_batch",
)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin that could not be imported or registered.

    :ivar version: its distribution's version ("" when unknown).
    :ivar origin: "built-in" or the name of the distribution that installed it.
    """

    name: str
    reason: str
    version: str = ""
    origin: str = ""


@dataclass(slots=True)
class PluginInfo:
    name: str
    version: str
    origin: str
    module: Any


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what the daemon learned while loading."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[LoadFailure] = []


def create_plugin_manager(
    *,
    blocked: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> PluginManager:
    """A fresh plugin manager: hookspecs, then every plugin from the entry-point group
    (built-ins first, then third-party ones by name) except the blocked ones, then
    ``extra`` plugin objects by name (tests), then ``check_pending``.

    Plugins that fail to import are recorded in ``pm.failures`` with the reason; the
    caller applies the ``plugin_failure`` policy.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    blocked = set(blocked)
    eps = list(entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP))

    def order(ep: metadata.EntryPoint) -> tuple[int, str]:
        return (0 if _dist_name(ep) == OWN_DISTRIBUTION else 1, ep.name)

    # pluggy calls the most recently registered first: register in reverse order.
    for ep in sorted(eps, key=order, reverse=True):
        if ep.name in blocked:
            pm.set_blocked(ep.name)
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:
            pm.failures.append(
                LoadFailure(
                    ep.name, f"import failed: {type(exc).__name__}: {exc}", _dist_version(ep), _origin(ep)
                )
            )
            continue
        _register(pm, ep.name, module, _dist_version(ep), _origin(ep))
    for name, obj in (extra or {}).items():
        _register(pm, name, obj, "", "test")
    # A hookimpl whose name is no hook (a typo) makes that plugin a load failure, so the
    # plugin_failure policy applies to it like to any other plugin that cannot load.
    while True:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin)
            if name is None:
                raise PluginError("?", str(exc)) from exc
            unknown = sorted(c.name for c in pm.get_hookcallers(exc.plugin) or [] if not c.has_spec())
            info = pm.infos.pop(name, None)
            pm.unregister(exc.plugin)
            pm.failures.append(
                LoadFailure(
                    name,
                    f"registration failed: unknown hook {', '.join(map(repr, unknown))} "
                    "(not in lightningd_py.hookspecs)",
                    info.version if info else "",
                    info.origin if info else "",
                )
            )
            continue
        return pm


def _register(pm: PluginManager, name: str, module: Any, version: str, origin: str) -> None:
    try:
        pm.register(module, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        pm.failures.append(LoadFailure(name, f"registration failed: {exc}", version, origin))
        return
    pm.infos[name] = PluginInfo(name, version, origin, module)


def _dist_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ""


def _dist_version(ep: metadata.EntryPoint) -> str:
    return ep.dist.version if ep.dist is not None else ""


def _origin(ep: metadata.EntryPoint) -> str:
    name = _dist_name(ep)
    return "built-in" if name == OWN_DISTRIBUTION else (name or "unknown")


def plugin_names(pm: PluginManager) -> list[str]:
    """Registered plugin names in call order."""
    return [name for name, _ in pm.list_name_plugin()][::-1]


def plugin_schemas(pm: PluginManager) -> dict[str, Any]:
    """Each registered plugin's config model (or None), from ``ldp_config_schema``."""
    schemas: dict[str, Any] = {}
    for name in pm.infos:
        plugin = pm.get_plugin(name)
        impls = [i for i in pm.hook.ldp_config_schema.get_hookimpls() if i.plugin is plugin]
        schemas[name] = impls[0].function() if impls else None
    return schemas


def describe_plugins(pm: PluginManager, config: Config | None = None) -> list[dict[str, Any]]:
    """Name, version, origin, enabled state and implemented hooks of every plugin."""
    rows = []
    # In call order: built-ins first, then third-party plugins by name.
    for name in plugin_names(pm):
        info = pm.infos.get(name)
        if info is None:
            continue
        plugin = pm.get_plugin(name)
        hooks = sorted(c.name for c in (pm.get_hookcallers(plugin) or []))
        enabled = config.enabled.get(name, True) if config is not None else True
        rows.append(
            {"name": name, "version": info.version, "origin": info.origin, "enabled": enabled, "hooks": hooks}
        )
    for failure in pm.failures:
        # enabled is what the config asks for: an enabled plugin that failed to load
        # stops the daemon under plugin_failure = "refuse".
        enabled = config.enabled.get(failure.name, True) if config is not None else True
        rows.append(
            {
                "name": failure.name,
                "version": failure.version,
                "origin": failure.origin,
                "enabled": enabled,
                "hooks": [],
                "error": failure.reason,
            }
        )
    return rows


# ---------------------------------------------------------------- running


@dataclass(slots=True)
class PluginRuntime:
    """Counters and the worker state of one plugin."""

    name: str
    daemon: Daemon
    cursor: int = 0
    handled: int = 0
    errors: int = 0
    retrying: bool = False
    last_error: str = ""
    dead_letters: int = 0
    hook_seconds: float = 0.0
    impls: dict[str, Any] = field(default_factory=dict)


class HookRunner:
    """Calls hooks the way the contract says: each plugin's implementation on its own,
    with its own ``daemon`` handle, awaited when async, errors isolated."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host

    def _impls(self, name: str) -> list[tuple[str, pluggy.HookImpl]]:
        caller = getattr(self._host.pm.hook, name)
        out = []
        # get_hookimpls is in reverse call order; honour tryfirst/trylast like pluggy does.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name
            if plugin_name in self._host.runtimes:
                out.append((plugin_name, impl))
        return out

    async def each(self, hook: str, **kwargs: Any) -> list[Any]:
        """Notification: call every plugin's implementation; return non-None answers."""
        return [value for _, value in await self.each_named(hook, **kwargs)]

    async def each_named(
        self, hook: str, per_plugin: Callable[[str], Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Notification like ``each``, answering ``(plugin name, answer)`` pairs.

        :param per_plugin: extra keyword arguments computed for each plugin by name
            (e.g. a route registry that records which plugin added a route).
        """
        answers = []
        for plugin_name, impl in self._impls(hook):
            args = {**kwargs, **(per_plugin(plugin_name) if per_plugin else {})}
            try:
                value = await self._call(plugin_name, impl, args)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                self._host.record_error(plugin_name, hook, exc)
                continue
            if value is not None:
                answers.append((plugin_name, value))
        return answers

    async def first(self, hook: str, **kwargs: Any) -> Any:
        """Decision: the first non-None answer (after awaiting); raising implementations
        are logged and skipped. None when nobody answers."""
        for plugin_name, impl in self._impls(hook):
            try:
                value = await self._call(plugin_name, impl, kwargs)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                self._host.record_error(plugin_name, hook, exc)
                continue
            if value is not None:
                return value
        return None

    async def _call(self, plugin_name: str, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
        args = dict(kwargs)
        args["daemon"] = self._host.runtimes[plugin_name].daemon
        value = impl.function(*[args[a] for a in impl.argnames])
        if inspect.isawaitable(value):
            value = await value
        return value

    def each_sync(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a synchronous hook of every plugin; exceptions propagate as PluginError."""
        answers = []
        for plugin_name, impl in self._impls(hook):
            args = dict(kwargs)
            args["daemon"] = self._host.runtimes[plugin_name].daemon
            try:
                value = impl.function(*[args[a] for a in impl.argnames])
            except Exception as exc:
                raise PluginError(plugin_name, f"{hook} failed: {type(exc).__name__}: {exc}") from exc
            if inspect.isawaitable(value):
                value.close()
                raise PluginError(plugin_name, f"{hook} must not be async")
            answers.append((plugin_name, value))
        return answers


class PluginHost:
    """Owns the enabled plugins at run time: their handles, workers and counters."""

    def __init__(
        self,
        *,
        config: Config,
        pm: PluginManager,
        store: Store,
        journal: Journal,
        registry: CollectorRegistry,
        node: NodeStatus,
        lnd: LndClient,
    ) -> None:
        self.config = config
        self.pm = pm
        self.store_backend = store
        self.journal = journal
        self.registry = registry
        self.node = node
        self.lnd = lnd
        self.hooks = HookRunner(self)
        self.runtimes: dict[str, PluginRuntime] = {}
        self.error_observers: list[Any] = []
        self.hook_observers: list[Any] = []
        for name in plugin_names(pm):
            if name not in pm.infos or not config.enabled.get(name, True):
                continue
            daemon = Daemon(name=name, host=self, settings=config.plugins.get(name))
            self.runtimes[name] = PluginRuntime(name=name, daemon=daemon)

    def store_for(self, name: str) -> Any:
        return self.store_backend.handle(name)

    def disable(self, name: str) -> None:
        self.runtimes.pop(name, None)

    def record_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        runtime = self.runtimes.get(plugin)
        if runtime is not None:
            runtime.errors += 1
            runtime.last_error = f"{hook}: {type(exc).__name__}: {exc}"
        for observe in self.error_observers:
            observe(plugin, hook)
        log.error("plugin hook failed", plugin=plugin, hook=hook, exc_info=exc)

    def status(self) -> dict[str, Any]:
        last = self.journal.last_id
        plugins = {
            name: {
                "cursor": rt.cursor,
                "lag": max(0, last - rt.cursor) if rt.impls else 0,
                "handled": rt.handled,
                "errors": rt.errors,
                "retrying": rt.retrying,
                "last_error": rt.last_error,
                "dead_letters": rt.dead_letters,
            }
            for name, rt in self.runtimes.items()
        }
        node = self.node
        return {
            "lnd": {
                "state": node.state,
                "reachable": node.reachable,
                "active": node.active,
                "synced_to_chain": node.synced_to_chain,
                "detail": node.detail,
                "since": node.since,
                "reconnects": node.reconnects,
            },
            "database": {
                "ok": self.store_backend.failed is None,
                "error": str(self.store_backend.failed) if self.store_backend.failed else "",
                "batches": self.store_backend.stats.batches,
                "writes": self.store_backend.stats.units,
            },
            "journal": {
                "last_id": last,
                "appended": self.journal.appended,
                "duplicates_dropped": self.journal.duplicates,
            },
            "plugins": plugins,
        }

    # ------------------------------------------------------------ workers

    def prepare_workers(self) -> None:
        """Find each plugin's event hooks and load its cursor (at start)."""
        starts: dict[str, Any] | None = None
        for name, rt in self.runtimes.items():
            plugin = self.pm.get_plugin(name)
            rt.impls = {}
            for hook in EVENT_HOOKS:
                for impl in getattr(self.pm.hook, hook).get_hookimpls():
                    if impl.plugin is plugin:
                        rt.impls[hook] = impl
            stored = self.journal.cursor(name)
            if stored is None:
                # Asked once for all plugins, so each implementation runs once.
                if starts is None:
                    starts = dict(self.hooks.each_sync("ldp_journal_start"))
                start = starts.get(name)
                if start not in (None, "beginning", "end"):
                    raise PluginError(
                        name, f"ldp_journal_start returned {start!r}; expected 'beginning' or 'end'"
                    )
                stored = self.journal.last_id if start == "end" else 0
            rt.cursor = stored

    async def run_worker(
        self, name: str, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed one plugin the journal after its cursor, in order, at least once."""
        rt = self.runtimes[name]
        handle = rt.daemon.store
        batch = self.config.core.journal_batch
        task_status.started()
        if not rt.impls:
            return
        run_impl = rt.impls.get("ldp_event_batch")
        stored, stored_at = rt.cursor, 0.0
        while True:
            events = await self.journal.read(rt.cursor, limit=batch)
            if not events:
                if stored != rt.cursor:
                    await self.journal.save_cursor(name, rt.cursor)
                    stored = rt.cursor
                await self.journal.wait(rt.cursor)
                continue
            delivered = False
            if run_impl is not None:
                await self._deliver_run(rt, run_impl, events)
                delivered = True
            else:
                for event in events:
                    impl = rt.impls.get(event.hook)
                    if impl is not None:
                        await self._deliver(rt, impl, event, event)
                        delivered = True
            rt.handled += len(events)
            if delivered:
                # The plugin's writes commit before its cursor moves past their events.
                try:
                    await handle.flush()
                except Exception as exc:
                    self.record_error(name, "store", exc)
                    await anyio.sleep(1.0)
                    continue
            rt.cursor = events[-1].id
            # A run of events the plugin has no hook for caused no writes: its cursor is
            # stored lazily (at least every second, and once idle), since reading such
            # events again after a crash does nothing.
            now = time.monotonic()
            if delivered or now - stored_at >= 1.0:
                await self.journal.save_cursor(name, rt.cursor)
                stored, stored_at = rt.cursor, now

    async def _deliver_run(self, rt: PluginRuntime, impl: pluggy.HookImpl, events: list[Any]) -> None:
        """Hand a run of events to ``ldp_event_batch``; if the run fails, hand its events
        over one at a time so each is retried (and given up) on its own."""
        if len(events) > 1:
            try:
                await self._call_hook(rt, impl, events)
                return
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                self.record_error(
                    rt.name, f"{impl.function.__name__}(events {events[0].id}..{events[-1].id})", exc
                )
        for event in events:
            await self._deliver(rt, impl, [event], event)

    async def _deliver(self, rt: PluginRuntime, impl: pluggy.HookImpl, arg: Any, event: Any) -> None:
        """Call one event hook with ``arg`` (the event, or a run holding only ``event``)
        until it succeeds or is given up."""
        max_attempts = self.config.core.hook_max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._call_hook(rt, impl, arg)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                rt.retrying = True
                self.record_error(rt.name, f"{impl.function.__name__}(event {event.id})", exc)
                if max_attempts and attempt >= max_attempts:
                    rt.dead_letters += 1
                    rt.retrying = False
                    await self.journal.dead_letter(
                        rt.name, event.id, f"{type(exc).__name__}: {exc}", time.time()
                    )
                    log.error(
                        "event given up after retries", plugin=rt.name, event_id=event.id, attempts=attempt
                    )
                    return
                await anyio.sleep(_backoff(attempt))
                continue
            rt.retrying = False
            return

    async def _call_hook(self, rt: PluginRuntime, impl: pluggy.HookImpl, arg: Any) -> None:
        """Call an event hook once with ``arg``, awaited within ``[core] hook_timeout``;
        its duration is observed whether it succeeds or fails."""
        timeout = self.config.core.hook_timeout
        started = time.perf_counter()
        try:
            value = impl.function(*[rt.daemon if a == "daemon" else arg for a in impl.argnames])
            if inspect.isawaitable(value):
                with anyio.fail_after(timeout):
                    await value
        except TimeoutError as exc:
            raise TimeoutError(f"hook did not finish within {timeout} s") from exc
        finally:
            elapsed = time.perf_counter() - started
            for observe in self.hook_observers:
                observe(rt.name, impl.function.__name__, elapsed)
        rt.hook_seconds += elapsed


def _backoff(attempt: int, base: float = 0.2, cap: float = 30.0) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * math.pow(2, attempt - 1)))
