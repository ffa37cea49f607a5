"""The rebalancer of one daemon: settings in force, the engine, the scheduler, events
and backups."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from lightningd_py.config import merge_tables, write_override
from lightningd_py.errors import ConfigError, LndError

from .backups import write_backup
from .engine import Rebalancer, RoundResult, Snapshot
from .ledger import Ledger
from .planner import ratio_of
from .policy import FeeChange, apply_fee_policy, execute_lifecycle, fee_rate_for, lifecycle_recommendations
from .settings import RebalancerSettings, validation_context

if TYPE_CHECKING:
    from lightningd_py.config import Config
    from lightningd_py.daemon import Daemon
    from lightningd_py.events import BackupEvent, ChannelEvent, ForwardEvent, PaymentEvent

__all__ = ["ConfigRejected", "RebalancerService", "TooSoon"]

BUDGET_REFRESH = 30.0


class ConfigRejected(Exception):
    """A config change that does not validate: ``problems`` are (key path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
        self.problems = problems


class TooSoon(Exception):
    """An automatic round was asked for before ``auto_min_interval`` passed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class RebalancerService:
    """Owns the plugin's state for one daemon handle."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings: RebalancerSettings = (
            daemon.settings if isinstance(daemon.settings, RebalancerSettings) else RebalancerSettings()
        )
        self.ledger = Ledger(daemon.store)
        self.engine = Rebalancer(daemon, self.ledger, lambda: self.settings)
        self.scheduler_running = self.settings.scheduler.enabled
        self._wake = anyio.Event()
        self._last_api_round = 0.0
        self._backup_lock = anyio.Lock()
        self.backup_error: str | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self.engine.snapshot

    async def open(self) -> None:
        """Recover from the previous run and load the numbers metrics report."""
        abandoned = await self.ledger.abandon_running()
        if abandoned:
            self.daemon.log.warning("rebalances interrupted by the last stop marked failed", count=abandoned)
        totals = await self.ledger.totals()
        snap = self.engine.snapshot
        for status in ("succeeded", "failed", "dry_run"):
            snap.results[status] = totals.get(status, 0)
        snap.fees_paid_msat = totals["fees_msat"]
        snap.last_backup_time = await self.ledger.last_backup_time()
        snap.scheduler_running = self.scheduler_running
        await self.engine.refresh_budget()

    # ------------------------------------------------------------ settings

    def apply(self, settings: RebalancerSettings) -> None:
        """Put new settings in force (PUT /config and SIGHUP reload)."""
        scheduler_changed = settings.scheduler != self.settings.scheduler
        self.settings = settings
        self.daemon.settings = settings
        if scheduler_changed:
            self.scheduler_running = settings.scheduler.enabled
            self.engine.snapshot.scheduler_running = self.scheduler_running
            self._wake.set()

    def effective(self) -> dict[str, Any]:
        return self.settings.model_dump(mode="json")

    async def update_config(self, patch: Mapping[str, Any]) -> RebalancerSettings:
        """Validate ``patch`` merged over the settings in force, persist it to the
        overrides file, and apply it at once.

        :raises ConfigRejected: naming each key at fault.
        """
        backup = patch.get("backup")
        if isinstance(backup, Mapping) and "path" in backup:
            # An API token must not choose where the daemon writes files.
            raise ConfigRejected([("backup.path", "can only be set in the config file")])
        config = self.daemon.config
        # The same merge the loader makes at the next start: operator's table, then overrides.
        operator, overrides = await anyio.to_thread.run_sync(_current_tables, config, self.daemon.name)
        merged = merge_tables(operator, merge_tables(overrides, patch))
        merged.pop("enabled", None)
        context = validation_context(config.path.parent, config.core.state_dir)
        try:
            new = RebalancerSettings.model_validate(merged, context=context)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                msg = str(err.get("ctx", {}).get("error", err["msg"]))
                for line in msg.splitlines():
                    key, sep, rest = line.partition(": ")
                    if sep and key.isidentifier() and key in _field_names(err["loc"]):
                        problems.append((f"{loc}.{key}".strip("."), rest))
                    else:
                        problems.append((loc, line))
            raise ConfigRejected(problems) from None
        try:
            await anyio.to_thread.run_sync(write_override, config, self.daemon.name, patch)
        except ConfigError as exc:
            raise ConfigRejected([("", p) for p in exc.problems]) from None
        self.apply(new)
        self.daemon.log.info("settings changed through the API", keys=sorted(_paths(patch)))
        return new

    async def set_scheduler(self, running: bool) -> None:
        """Start or stop the scheduler and persist it (``scheduler.enabled``)."""
        await self.update_config({"scheduler": {"enabled": running}})
        self.scheduler_running = running
        self.engine.snapshot.scheduler_running = running
        self._wake.set()

    # ------------------------------------------------------------ rounds

    async def api_round(self, dry_run: bool | None) -> RoundResult:
        wait = self._last_api_round + self.settings.auto_min_interval - time.monotonic()
        if self._last_api_round and wait > 0:
            raise TooSoon(wait)
        self._last_api_round = time.monotonic()
        return await self.engine.round(mode="auto", dry_run=dry_run)

    async def run_scheduler(self) -> None:
        """Service: a round every ``scheduler.interval`` while the scheduler runs."""
        while True:
            if not self.scheduler_running:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            started = time.monotonic()
            await self._scheduled_round()
            delay = self.settings.scheduler.interval - (time.monotonic() - started)
            with anyio.move_on_after(max(0.0, delay)):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()

    async def _scheduled_round(self) -> None:
        s = self.settings
        try:
            result = await self.engine.round(mode="scheduler")
            self.daemon.log.info(
                "scheduled round finished",
                planned=result.planned,
                succeeded=sum(r.status == "succeeded" for r in result.results),
                fees_msat=result.fees_msat,
            )
            if s.fee_policy.enabled:
                await self.run_fee_policy()
            if s.lifecycle.enabled:
                for action in await lifecycle_recommendations(self.daemon, self.ledger, s):
                    try:
                        await execute_lifecycle(self.daemon, self.ledger, s, action)
                    except LndError as exc:
                        self.daemon.log.warning(
                            "lifecycle action failed", target=action.target, error=exc.details
                        )
        except LndError as exc:
            # LND down or locked: the next round tries again.
            self.daemon.log.warning("scheduled round skipped", error=exc.details, kind=exc.kind)

    async def run_fee_policy(self, dry_run: bool | None = None) -> list[FeeChange]:
        """Apply the fee policy once (a dry run unless told or configured otherwise)."""
        changes = await apply_fee_policy(self.daemon, self.ledger, self.settings, dry_run)
        counts = self.engine.snapshot.fee_updates
        for c in changes:
            key = "dry_run" if c.dry_run else ("applied" if c.applied else "failed")
            counts[key] = counts.get(key, 0) + 1
        return changes

    async def fee_policy_preview(self) -> list[dict[str, Any]]:
        """Every active channel's rate at LND and the rate the policy gives it."""
        fp = self.settings.fee_policy
        current = {f.chan_id: f for f in (await self.daemon.lnd.fee_report()).channel_fees}
        out = []
        for c in await self.daemon.lnd.list_channels(active_only=True):
            ratio = ratio_of(c.local_balance_sat, c.remote_balance_sat)
            fee = current.get(c.chan_id)
            out.append(
                {
                    "chan_id": c.chan_id,
                    "channel_point": c.channel_point,
                    "ratio": round(ratio, 6),
                    "base_fee_msat": fee.base_fee_msat if fee is not None else None,
                    "fee_ppm": fee.fee_per_mil if fee is not None else None,
                    "policy_ppm": fee_rate_for(ratio, fp),
                }
            )
        return out

    async def refresh_budget(self) -> None:
        """Service: keep the rolling budget numbers fresh for metrics (the window moves)."""
        while True:
            await self.engine.refresh_budget()
            await anyio.sleep(BUDGET_REFRESH)

    # ------------------------------------------------------------ events

    async def on_forward(self, event: ForwardEvent) -> None:
        if event.type != "forward.settled":
            return
        ts = event.timestamp_ns / 1e9 if event.timestamp_ns else event.time
        await self.ledger.add_forward(
            event.id,
            event.incoming_chan_id,
            event.outgoing_chan_id,
            event.amt_in_msat,
            event.amt_out_msat,
            ts,
        )

    async def on_channel(self, event: ChannelEvent) -> None:
        # LND's (in)active updates carry only the channel point.
        if event.type == "channel.inactive":
            await self.ledger.set_inactive(event.channel_point, event.time)
        elif event.type in ("channel.active", "channel.closed"):
            await self.ledger.set_inactive(event.channel_point, None)

    async def on_payment(self, event: PaymentEvent) -> None:
        changed = await self.ledger.settle_by_hash(
            event.payment_hash, event.type == "payment.succeeded", event.fee_msat
        )
        if changed:
            await self.engine.refresh_budget()

    async def on_backup(self, event: BackupEvent) -> None:
        b = self.settings.backup
        if not b.enabled:
            return
        async with self._backup_lock:
            # Replays after a restart must not put an older backup over a newer one.
            if event.id and event.id <= await self.ledger.last_backup_event():
                return
            # A path left relative (settings built without the config's context) still
            # belongs in the state directory, never in the working directory.
            path = b.path if b.path.is_absolute() else self.daemon.state_dir / b.path
            try:
                done = await anyio.to_thread.run_sync(write_backup, path, event.multi_chan_backup, b.keep)
            except OSError as exc:
                # Raised again so the event is retried; health says so meanwhile.
                self.backup_error = f"{b.path}: {exc.strerror or exc}"
                raise
            self.backup_error = None
            await self.ledger.record_backup(
                event.id, str(done.path), done.size, len(event.chan_points), done.sha256
            )
            await self.ledger.store.flush()
        snap = self.engine.snapshot
        snap.last_backup_time = time.time()
        snap.backups_written += int(done.written)

    def health(self) -> dict[str, Any]:
        snap = self.engine.snapshot
        b = self.settings.backup
        return {
            # A backup that cannot be written is worth waking someone for.
            "ok": self.backup_error is None,
            "backup_error": self.backup_error,
            "scheduler_running": self.scheduler_running,
            "budget_remaining_msat": max(
                0, snap.budget_limit_msat - snap.budget_spent_msat - snap.budget_reserved_msat
            ),
            "last_backup_time": snap.last_backup_time or None,
            "backup_path": str(b.path) if b.enabled else None,
        }


def _field_names(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RebalancerSettings
    for part in loc:
        field = (
            model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        )
        if field is None or not hasattr(field.annotation, "model_fields"):
            return []
        model = field.annotation
    return list(model.model_fields)


def _paths(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out += _paths(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _current_tables(config: Config, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plugin's table in the operator's file and in the overrides file."""
    tables = []
    for path in (config.path, config.overrides_path):
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigRejected([("", f"{path}: cannot be read ({type(exc).__name__})")]) from None
        table = data.get("plugins", {}).get(name, {})
        tables.append(dict(table) if isinstance(table, dict) else {})
    return tables[0], tables[1]
