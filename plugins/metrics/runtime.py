"""The metrics plugin's settings and its state while the daemon runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from lightningd_py.config import HostPort, PluginSettings

from .ledger import Ledger
from .server import MetricsServer
from .snapshot import NodeSnapshot, SnapshotPoller

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon

__all__ = ["MetricsRuntime", "MetricsSettings"]


class MetricsSettings(PluginSettings):
    """``[plugins.metrics]``."""

    listen: HostPort = Field(
        "127.0.0.1:9108",
        json_schema_extra={"restart": True},
        description="host:port of the Prometheus endpoint (GET /metrics).",
    )
    refresh_interval: float = Field(
        5.0,
        ge=1,
        le=300,
        description="Seconds between reads of the node from LND (metrics answer from the last read).",
    )
    sample_interval: float = Field(
        900.0,
        ge=10,
        le=86400,
        description="Seconds between channel balance samples (uptime, balance ratio over time).",
    )
    sample_retention_days: int = Field(400, ge=1, le=3650, description="Days of balance samples kept.")
    currency: str | None = Field(
        None,
        description="Default ISO 4217 currency of fiat figures in the analytics API (e.g. EUR).",
    )
    fee_estimate_target_conf: int = Field(
        6,
        ge=1,
        le=1008,
        description="Confirmation target of the on-chain fee estimate the fee analysis compares with.",
    )
    onchain_tx_vbytes: int = Field(
        141,
        ge=50,
        le=100_000,
        description="Size of the on-chain transaction a payment is compared with (1-in, 2-out P2WPKH).",
    )

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) != 3 or not value.isascii() or not value.isalpha() or not value.isupper():
            raise ValueError("expected a three-letter upper-case ISO 4217 code, e.g. EUR")
        return value


@dataclass(slots=True)
class MetricsRuntime:
    """What the plugin holds while the daemon runs (one per daemon handle)."""

    daemon: Daemon
    ledger: Ledger
    poller: SnapshotPoller
    server: MetricsServer
    last_sample: float = 0.0

    @classmethod
    def create(cls, daemon: Daemon) -> MetricsRuntime:
        settings = _settings(daemon)
        runtime = cls(
            daemon=daemon,
            ledger=Ledger(daemon.store),
            poller=SnapshotPoller(
                lambda: daemon.lnd if daemon.node.active else None,
                lambda: _settings(daemon).refresh_interval,
            ),
            server=MetricsServer(daemon.registry, settings.listen),
        )
        runtime.poller.on_refresh = runtime.sample
        return runtime

    @property
    def settings(self) -> MetricsSettings:
        return _settings(self.daemon)

    async def sample(self, snapshot: NodeSnapshot) -> None:
        """Record channel balances every ``sample_interval`` and drop expired samples."""
        settings = self.settings
        if snapshot.taken_at - self.last_sample < settings.sample_interval:
            return
        self.last_sample = snapshot.taken_at
        await self.ledger.sample(snapshot)
        await self.ledger.prune_samples(time.time() - settings.sample_retention_days * 86400)


def _settings(daemon: Daemon) -> MetricsSettings:
    settings = daemon.settings
    return settings if isinstance(settings, MetricsSettings) else MetricsSettings()
