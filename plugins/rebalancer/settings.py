"""The ``[plugins.rebalancer]`` config table.

Every field has a safe default: out of the box the plugin only recommends, keeps channel
backups, and spends nothing until an operator asks for a rebalance (or starts the
scheduler). Fee policy and channel lifecycle actions are opt-in; fee policy is a dry run
until told otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lightningd_py.config import PluginSettings

__all__ = [
    "BackupSettings",
    "FeePolicySettings",
    "LifecycleSettings",
    "RebalancerSettings",
    "SchedulerSettings",
    "validation_context",
]

_PUBKEY = re.compile(r"^(02|03)[0-9a-f]{64}$")


def _check_pubkeys(values: list[str]) -> list[str]:
    out = []
    for i, value in enumerate(values):
        key = value.strip().lower()
        if not _PUBKEY.match(key):
            raise ValueError(f"item {i}: expected a 33-byte node public key in hex (66 characters)")
        out.append(key)
    return out


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedulerSettings(_Table):
    """``[plugins.rebalancer.scheduler]``: automatic rounds on an interval."""

    enabled: bool = Field(False, description="Run rounds on the interval (also started/stopped via the API).")
    interval: float = Field(3600.0, ge=10, description="Seconds between the starts of two rounds.")


class FeePolicySettings(_Table):
    """``[plugins.rebalancer.fee_policy]``: outgoing fee rate from each channel's balance."""

    enabled: bool = Field(
        False, description="Compute and (unless dry_run) apply fee rates each scheduler round."
    )
    dry_run: bool = Field(True, description="Record what would be set without calling UpdateChannelPolicy.")
    min_ppm: int = Field(1, ge=0, le=1_000_000, description="Rate for a channel whose balance is all local.")
    max_ppm: int = Field(
        1000, ge=0, le=1_000_000, description="Rate for a channel whose balance is all remote."
    )
    base_fee_msat: int = Field(1000, ge=0, description="Base fee set with every update.")
    time_lock_delta: int = Field(80, ge=18, le=65535, description="CLTV delta set with every update.")
    min_change_ppm: int = Field(
        10, ge=0, description="Leave a channel alone when its new rate differs by less than this."
    )

    @model_validator(mode="after")
    def _order(self) -> FeePolicySettings:
        if self.max_ppm < self.min_ppm:
            raise ValueError(f"max_ppm: must be >= min_ppm ({self.min_ppm})")
        return self


class LifecycleSettings(_Table):
    """``[plugins.rebalancer.lifecycle]``: close idle channels, open to candidate peers."""

    enabled: bool = Field(False, description="Allow executing lifecycle recommendations (API and scheduler).")
    inactive_days: float = Field(14.0, gt=0, description="Recommend closing a channel inactive this long.")
    idle_days: float = Field(
        30.0, gt=0, description="Recommend closing a channel that routed nothing this long."
    )
    candidates: list[str] = Field(default_factory=list, description="Node public keys to open channels to.")
    min_onchain_sat: int = Field(
        5_000_000, ge=0, description="Recommend opening only while confirmed on-chain funds exceed this."
    )
    channel_size_sat: int = Field(2_000_000, ge=20_000, description="Size of each recommended channel.")
    sat_per_vbyte: int | None = Field(
        None, ge=1, description="Fee rate for opens and closes (LND's estimate if unset)."
    )

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: list[str]) -> list[str]:
        return _check_pubkeys(value)


class BackupSettings(_Table):
    """``[plugins.rebalancer.backup]``: static channel backups written on every update."""

    enabled: bool = True
    path: Path = Field(
        Path("channel.backup"),
        validate_default=True,
        description="File of the latest multi-channel backup; relative to state_dir.",
    )
    keep: int = Field(
        5, ge=1, le=1000, description="Versions kept: the file plus keep-1 older ones (.1, .2, ...)."
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path, info: ValidationInfo) -> Path:
        value = value.expanduser()
        context = info.context if isinstance(info.context, dict) else {}
        state_dir = context.get("state_dir")
        if not value.is_absolute() and state_dir is not None:
            value = Path(state_dir) / value
        if value.name in ("", ".", ".."):
            raise ValueError("expected a file path")
        return value


class RebalancerSettings(PluginSettings):
    """``[plugins.rebalancer]``."""

    min_ratio: float = Field(
        0.2, ge=0, le=1, description="Below this local/capacity ratio a channel is depleted."
    )
    max_ratio: float = Field(0.8, ge=0, le=1, description="Above this ratio a channel has surplus.")
    target_ratio: float = Field(0.5, ge=0, le=1, description="Where a rebalance brings a channel.")
    exclude_channels: list[int] = Field(default_factory=list, description="Channel ids never rebalanced.")
    exclude_peers: list[str] = Field(
        default_factory=list, description="Peers whose channels are never rebalanced."
    )
    max_fee_ppm: int = Field(100, ge=0, le=1_000_000, description="Fee limit per attempt, ppm of the amount.")
    max_fee_msat: int = Field(
        1_000_000, ge=0, description="Absolute fee limit per attempt, whatever the amount (msat)."
    )
    daily_budget_msat: int = Field(
        10_000_000, ge=0, description="Fees all rebalances may spend in any rolling 24 hours (msat)."
    )
    min_amount_sat: int = Field(10_000, ge=1, description="Smallest amount an attempt sends.")
    max_amount_sat: int = Field(5_000_000, ge=1, description="Largest amount one rebalance moves.")
    max_attempts: int = Field(
        4, ge=1, le=20, description="Attempts per rebalance, halving the amount each time."
    )
    payment_timeout: int = Field(60, ge=1, le=3600, description="Seconds LND may spend on one attempt.")
    cooldown: float = Field(
        3600.0, ge=0, description="Seconds a channel is skipped after a failed rebalance."
    )
    economic_check: bool = Field(
        True, description="Cap the fee at what the depleted channel's own fee rate earns back on the amount."
    )
    dry_run: bool = Field(False, description="Plan and record rebalances without paying anything.")
    max_rebalances_per_round: int = Field(
        10, ge=1, le=1000, description="Rebalances one automatic round may start."
    )
    parallel: int = Field(1, ge=1, le=32, description="Rebalances of one round that run at once.")
    auto_min_interval: float = Field(
        60.0, ge=0, description="Seconds between two API-started automatic rounds."
    )
    volume_days: float = Field(7.0, gt=0, description="Routing volume window that weighs priorities.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    fee_policy: FeePolicySettings = Field(default_factory=FeePolicySettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    # Validated from {} (not built bare) so the default path resolves against state_dir too.
    backup: BackupSettings = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]

    @field_validator("exclude_peers")
    @classmethod
    def _exclude_peers(cls, value: list[str]) -> list[str]:
        return _check_pubkeys(value)

    @model_validator(mode="after")
    def _bounds(self) -> RebalancerSettings:
        problems = []
        if not self.min_ratio <= self.target_ratio:
            problems.append(f"target_ratio: must be >= min_ratio ({self.min_ratio:g})")
        if not self.target_ratio <= self.max_ratio:
            problems.append(f"target_ratio: must be <= max_ratio ({self.max_ratio:g})")
        if self.max_amount_sat < self.min_amount_sat:
            problems.append(f"max_amount_sat: must be >= min_amount_sat ({self.min_amount_sat})")
        if problems:
            raise ValueError("\n".join(problems))
        return self


def validation_context(base_dir: Path, state_dir: Path) -> dict[str, Any]:
    """The context the config loader validates with (relative paths resolve the same way)."""
    return {"base_dir": base_dir, "state_dir": state_dir}
