"""Fee policy and channel lifecycle: what to set or do per channel, and doing it.

Fee policy sets each channel's outgoing fee rate from its balance ratio, on a straight
line from ``max_ppm`` (no local balance: forwarding out through it is scarce, so dear) to
``min_ppm`` (all local: cheap, to attract outgoing traffic). Lifecycle recommends closing
channels that stayed inactive or routed nothing for a configured time, and opening
channels to candidate peers while confirmed on-chain funds allow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from lightningd_py.errors import LndError

from .ledger import DAY, Ledger
from .planner import ratio_of
from .settings import FeePolicySettings, RebalancerSettings

if TYPE_CHECKING:
    from lightningd_py.daemon import Daemon

__all__ = [
    "FeeChange",
    "LifecycleAction",
    "apply_fee_policy",
    "execute_lifecycle",
    "fee_rate_for",
    "lifecycle_recommendations",
]


class FeeChange(msgspec.Struct, frozen=True, kw_only=True):
    """One channel's fee rate decision (``applied`` False in a dry run or on error)."""

    chan_id: int
    channel_point: str
    ratio: float
    old_ppm: int
    new_ppm: int
    base_fee_msat: int
    time_lock_delta: int
    applied: bool
    dry_run: bool
    error: str = ""


class LifecycleAction(msgspec.Struct, frozen=True, kw_only=True):
    """A recommended close (``target`` a channel point) or open (``target`` a pubkey)."""

    action: str
    target: str
    reason: str
    chan_id: int = 0
    amount_sat: int = 0


def fee_rate_for(ratio: float, fp: FeePolicySettings) -> int:
    """The fee rate (ppm) for a channel with this local balance ratio."""
    ratio = min(1.0, max(0.0, ratio))
    return round(fp.max_ppm - (fp.max_ppm - fp.min_ppm) * ratio)


async def apply_fee_policy(
    daemon: Daemon, ledger: Ledger, settings: RebalancerSettings, dry_run: bool | None = None
) -> list[FeeChange]:
    """Compute every active channel's rate and, unless in a dry run, set the ones that
    changed by at least ``min_change_ppm``. Every decision that changes a rate is recorded."""
    fp = settings.fee_policy
    dry = fp.dry_run if dry_run is None else dry_run
    excluded_chans, excluded_peers = set(settings.exclude_channels), set(settings.exclude_peers)
    current = {f.chan_id: f for f in (await daemon.lnd.fee_report()).channel_fees}
    changes: list[FeeChange] = []
    for c in await daemon.lnd.list_channels(active_only=True):
        if c.chan_id in excluded_chans or c.remote_pubkey in excluded_peers:
            continue
        ratio = ratio_of(c.local_balance_sat, c.remote_balance_sat)
        new = fee_rate_for(ratio, fp)
        fee = current.get(c.chan_id)
        old = fee.fee_per_mil if fee is not None else -1
        old_base = fee.base_fee_msat if fee is not None else -1
        if old >= 0 and abs(new - old) < fp.min_change_ppm and old_base == fp.base_fee_msat:
            continue
        if old == new and old_base == fp.base_fee_msat:
            continue
        applied, error = False, ""
        if not dry:
            try:
                await daemon.lnd.update_channel_policy(
                    c.channel_point, fp.base_fee_msat, new, fp.time_lock_delta
                )
                applied = True
            except LndError as exc:
                error = f"{exc.code}: {exc.details}"[:300]
        change = FeeChange(
            chan_id=c.chan_id,
            channel_point=c.channel_point,
            ratio=round(ratio, 6),
            old_ppm=max(old, 0),
            new_ppm=new,
            base_fee_msat=fp.base_fee_msat,
            time_lock_delta=fp.time_lock_delta,
            applied=applied,
            dry_run=dry,
            error=error,
        )
        await ledger.record_fee_change(msgspec.to_builtins(change))
        changes.append(change)
    await ledger.store.flush()
    return changes


async def lifecycle_recommendations(
    daemon: Daemon, ledger: Ledger, settings: RebalancerSettings, now: float | None = None
) -> list[LifecycleAction]:
    """Closes of long inactive or idle channels, then opens to candidate peers."""
    lc = settings.lifecycle
    now = time.time() if now is None else now
    channels = await daemon.lnd.list_channels()
    inactive = await ledger.inactive_since()
    last_day = await ledger.last_forward_days()
    out: list[LifecycleAction] = []
    for c in channels:
        since = inactive.get(c.channel_point)
        if not c.active and since is None:
            # Inactive since before the daemon watched it: count from now on.
            await ledger.set_inactive(c.channel_point, now)
        if not c.active and since is not None and now - since >= lc.inactive_days * DAY:
            days = (now - since) / DAY
            out.append(
                LifecycleAction(
                    action="close",
                    target=c.channel_point,
                    chan_id=c.chan_id,
                    reason=f"inactive for {days:.1f} days",
                )
            )
            continue
        idle_for = now - (last_day[c.chan_id] + 1) * DAY if c.chan_id in last_day else float(c.lifetime)
        if c.lifetime >= lc.idle_days * DAY and idle_for >= lc.idle_days * DAY:
            out.append(
                LifecycleAction(
                    action="close",
                    target=c.channel_point,
                    chan_id=c.chan_id,
                    reason=f"routed nothing for {idle_for / DAY:.1f} days",
                )
            )
    if lc.candidates:
        wallet = await daemon.lnd.wallet_balance()
        pending = await daemon.lnd.pending_channels()
        have = {c.remote_pubkey for c in channels} | {p.remote_pubkey for p in pending.pending_open}
        # The threshold is kept on chain: only funds above it go into new channels.
        spare = wallet.confirmed_balance_sat - lc.min_onchain_sat
        for pubkey in lc.candidates:
            if pubkey in have or spare < lc.channel_size_sat:
                continue
            spare -= lc.channel_size_sat
            out.append(
                LifecycleAction(
                    action="open",
                    target=pubkey,
                    amount_sat=lc.channel_size_sat,
                    reason=f"confirmed on-chain balance {wallet.confirmed_balance_sat} sat "
                    f"exceeds {lc.min_onchain_sat} sat",
                )
            )
    return out


async def execute_lifecycle(
    daemon: Daemon, ledger: Ledger, settings: RebalancerSettings, action: LifecycleAction
) -> dict[str, Any]:
    """Close or open as recommended; recorded either way. Raises ``LndError``."""
    lc = settings.lifecycle
    try:
        if action.action == "close":
            txid = await daemon.lnd.close_channel(action.target, sat_per_vbyte=lc.sat_per_vbyte)
            detail = f"closing txid {txid}"
        else:
            point = await daemon.lnd.open_channel(
                action.target, action.amount_sat, sat_per_vbyte=lc.sat_per_vbyte
            )
            detail = f"channel point {point}"
    except LndError as exc:
        await ledger.record_lifecycle(
            action.action,
            action.target,
            action.amount_sat,
            action.reason,
            "failed",
            f"{exc.code}: {exc.details}",
        )
        raise
    await ledger.record_lifecycle(
        action.action, action.target, action.amount_sat, action.reason, "done", detail
    )
    daemon.log.info("lifecycle action executed", action=action.action, target=action.target, detail=detail)
    return {**msgspec.to_builtins(action), "result": "done", "detail": detail}
