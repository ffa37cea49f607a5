"""Recommendations and pairing: pure functions of channel balances, routing volume and
settings (no I/O, so they are tested directly and reused by the API, the automatic
rounds and the bench).

A channel's ratio is its local balance over its local plus remote balance. Below
``min_ratio`` it is depleted (it needs inbound liquidity moved to our side), above
``max_ratio`` it has surplus. A rebalance pays ourselves out through a channel with
spare local balance (the source) and back in through the depleted channel (the target).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from lightningd_py.lnd.types import Channel

from .settings import RebalancerSettings

__all__ = ["ChannelAdvice", "PlannedRebalance", "advise", "pair", "ratio_of"]


class ChannelAdvice(msgspec.Struct, frozen=True, kw_only=True):
    """One channel's recommendation.

    :ivar status: ``"depleted"``, ``"surplus"``, ``"balanced"``, ``"excluded"``,
        ``"inactive"`` or ``"cooldown"``.
    :ivar amount_sat: what moves it to the target ratio (in for depleted, out for
        surplus), 0 otherwise.
    :ivar priority: 1 (leave it) to 10 (far off and routes a lot).
    """

    chan_id: int
    channel_point: str
    remote_pubkey: str
    capacity_sat: int
    local_sat: int
    remote_sat: int
    ratio: float
    status: str
    amount_sat: int
    priority: int
    volume_msat: int = 0
    cooldown_until: float = 0.0


class PlannedRebalance(msgspec.Struct, frozen=True, kw_only=True):
    """A source/target pair and the amount to move between them."""

    outgoing_chan_id: int
    incoming_chan_id: int
    last_hop_pubkey: str
    amount_sat: int
    priority: int


def ratio_of(local_sat: int, remote_sat: int) -> float:
    """Local share of the channel's balance (0 when the channel holds nothing)."""
    total = local_sat + remote_sat
    return local_sat / total if total > 0 else 0.0


def advise(
    channels: Iterable[Channel],
    settings: RebalancerSettings,
    volumes: Mapping[int, int] | None = None,
    cooldowns: Mapping[int, float] | None = None,
    now: float = 0.0,
) -> list[ChannelAdvice]:
    """Every channel's advice, highest priority first.

    :param volumes: msat routed through each channel (in and out) over the volume window.
    :param cooldowns: channel id -> unix time until which it is cooling down.
    """
    volumes = volumes or {}
    cooldowns = cooldowns or {}
    excluded_chans = set(settings.exclude_channels)
    excluded_peers = set(settings.exclude_peers)
    chans = list(channels)
    top_volume = max((volumes.get(c.chan_id, 0) for c in chans), default=0)
    out = []
    for c in chans:
        local, remote = c.local_balance_sat, c.remote_balance_sat
        ratio = ratio_of(local, remote)
        volume = volumes.get(c.chan_id, 0)
        until = cooldowns.get(c.chan_id, 0.0)
        target_local = int(settings.target_ratio * (local + remote))
        if ratio < settings.min_ratio:
            status, amount = "depleted", max(0, target_local - local)
            off = (settings.min_ratio - ratio) / settings.min_ratio if settings.min_ratio > 0 else 0.0
        elif ratio > settings.max_ratio:
            status, amount = "surplus", max(0, local - target_local)
            span = 1.0 - settings.max_ratio
            off = (ratio - settings.max_ratio) / span if span > 0 else 0.0
        else:
            status, amount, off = "balanced", 0, 0.0
        if status != "balanced":
            # How far out of bounds weighs more than routing volume; both in [0, 1].
            weight = 0.6 * min(1.0, off) + 0.4 * (volume / top_volume if top_volume else 0.0)
            priority = max(2, min(10, 2 + round(8 * weight)))
        else:
            priority = 1
        if c.chan_id in excluded_chans or c.remote_pubkey in excluded_peers:
            status, amount, priority = "excluded", 0, 1
        elif not c.active:
            status, amount, priority = "inactive", 0, 1
        elif until > now and status != "balanced":
            status = "cooldown"
        out.append(
            ChannelAdvice(
                chan_id=c.chan_id,
                channel_point=c.channel_point,
                remote_pubkey=c.remote_pubkey,
                capacity_sat=c.capacity_sat,
                local_sat=local,
                remote_sat=remote,
                ratio=round(ratio, 6),
                status=status,
                amount_sat=amount,
                priority=priority,
                volume_msat=volume,
                cooldown_until=until if until > now else 0.0,
            )
        )
    out.sort(key=lambda a: (-a.priority, -a.amount_sat, a.chan_id))
    return out


@dataclass(slots=True)
class _Pool:
    advice: ChannelAdvice
    spare: int  # sat it can give (source) or take (target) without crossing the target ratio


def _given(pool: _Pool, plans: list[PlannedRebalance]) -> int:
    return sum(p.amount_sat for p in plans if p.outgoing_chan_id == pool.advice.chan_id)


def pair(
    advice: Iterable[ChannelAdvice],
    settings: RebalancerSettings,
    busy: Iterable[int] = (),
) -> list[PlannedRebalance]:
    """Pair channels into rebalances, highest priority first.

    Depleted channels are filled from surplus channels first, then from any channel above
    the target ratio; surplus channels left over are emptied into channels below the
    target, then into balanced channels up to halfway between the target and
    ``max_ratio``. No channel leaves the bounds because of a plan, and no amount is below
    ``min_amount_sat`` or above ``max_amount_sat``. Channels in ``busy`` are skipped.
    """
    busy = set(busy)
    rows = [a for a in advice if a.chan_id not in busy]
    # A channel cooling down is neither filled nor used as a source.
    usable = [a for a in rows if a.status in ("depleted", "surplus", "balanced") and not a.cooldown_until]

    def total(a: ChannelAdvice) -> int:
        return a.local_sat + a.remote_sat

    def give(a: ChannelAdvice) -> int:
        return max(0, a.local_sat - int(settings.target_ratio * total(a)))

    def take(a: ChannelAdvice) -> int:
        return max(0, int(settings.target_ratio * total(a)) - a.local_sat)

    sources = [_Pool(a, give(a)) for a in usable if give(a) > 0]
    # Surplus channels first, then the fullest.
    sources.sort(key=lambda p: (p.advice.status != "surplus", -p.advice.ratio))
    sinks = [_Pool(a, take(a)) for a in usable if take(a) > 0]
    sinks.sort(key=lambda p: (p.advice.status != "depleted", p.advice.ratio))
    plans: list[PlannedRebalance] = []
    floor, ceiling = settings.min_amount_sat, settings.max_amount_sat

    def match(needy: _Pool, others: list[_Pool], needy_is_target: bool) -> None:
        for other in others:
            if needy.spare < floor:
                return
            if other.spare < floor or other.advice.remote_pubkey == needy.advice.remote_pubkey:
                continue
            if other.advice.chan_id == needy.advice.chan_id:
                continue
            amount = min(needy.spare, other.spare, ceiling)
            source, target = (other, needy) if needy_is_target else (needy, other)
            same = next(
                (
                    i
                    for i, p in enumerate(plans)
                    if p.outgoing_chan_id == source.advice.chan_id
                    and p.incoming_chan_id == target.advice.chan_id
                ),
                None,
            )
            if same is not None:
                # One pair, one rebalance: top up the earlier plan as far as the ceiling allows.
                amount = min(amount, ceiling - plans[same].amount_sat)
                if amount <= 0:
                    continue
                plans[same] = msgspec.structs.replace(plans[same], amount_sat=plans[same].amount_sat + amount)
                needy.spare -= amount
                other.spare -= amount
                continue
            plans.append(
                PlannedRebalance(
                    outgoing_chan_id=source.advice.chan_id,
                    incoming_chan_id=target.advice.chan_id,
                    last_hop_pubkey=target.advice.remote_pubkey,
                    amount_sat=amount,
                    priority=needy.advice.priority,
                )
            )
            needy.spare -= amount
            other.spare -= amount

    targets = [p for p in sinks if p.advice.status == "depleted"]
    targets.sort(key=lambda p: (-p.advice.priority, p.advice.ratio))
    for target in targets:
        match(target, sources, needy_is_target=True)
    leftovers = [p for p in sources if p.advice.status == "surplus"]
    leftovers.sort(key=lambda p: (-p.advice.priority, -p.advice.ratio))
    for source in leftovers:
        match(source, sinks, needy_is_target=False)
    # Surplus still left once every channel below the target is full: balanced channels
    # may take it up to halfway between the target and max_ratio, which brings the
    # surplus channel into bounds without pushing anyone out of them.
    # Only for channels still out of bounds after the first passes.
    leftovers = [
        p for p in leftovers if p.advice.local_sat - _given(p, plans) > settings.max_ratio * total(p.advice)
    ]
    if any(p.spare >= floor for p in leftovers):
        delta: dict[int, int] = {}
        for p in plans:
            delta[p.incoming_chan_id] = delta.get(p.incoming_chan_id, 0) + p.amount_sat
            delta[p.outgoing_chan_id] = delta.get(p.outgoing_chan_id, 0) - p.amount_sat
        ceiling_ratio = (settings.target_ratio + settings.max_ratio) / 2
        overflow = [
            _Pool(a, int(ceiling_ratio * total(a)) - a.local_sat - delta.get(a.chan_id, 0))
            for a in usable
            if a.status == "balanced"
        ]
        overflow = [p for p in overflow if p.spare >= floor]
        overflow.sort(key=lambda p: p.advice.ratio)
        for source in leftovers:
            match(source, overflow, needy_is_target=False)
    plans.sort(key=lambda p: (-p.priority, -p.amount_sat))
    return plans
