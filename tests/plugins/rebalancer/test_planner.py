"""Recommendations and pairing, from known balances."""

from __future__ import annotations

import pytest
from lightningd_py.plugins.rebalancer.planner import advise, pair, ratio_of
from lightningd_py.plugins.rebalancer.settings import RebalancerSettings

from lightningd_py.lnd.types import Channel

PEERS = [f"02{i:064x}" for i in range(1, 20)]


def chan(
    i: int, local: int, capacity: int = 1_000_000, active: bool = True, peer: int | None = None
) -> Channel:
    return Channel(
        chan_id=i,
        channel_point=f"{i:064x}:0",
        remote_pubkey=PEERS[i if peer is None else peer],
        capacity_sat=capacity,
        local_balance_sat=local,
        remote_balance_sat=capacity - local,
        active=active,
    )


def test_ratio_of_empty_channel_is_zero() -> None:
    assert ratio_of(0, 0) == 0.0
    assert ratio_of(250, 750) == 0.25


def test_status_amount_and_priority_bounds() -> None:
    s = RebalancerSettings()
    advice = {a.chan_id: a for a in advise([chan(1, 50_000), chan(2, 950_000), chan(3, 500_000)], s)}
    assert advice[1].status == "depleted" and advice[1].amount_sat == 450_000
    assert advice[2].status == "surplus" and advice[2].amount_sat == 450_000
    assert advice[3].status == "balanced" and advice[3].amount_sat == 0 and advice[3].priority == 1
    for a in advice.values():
        assert 1 <= a.priority <= 10


def test_priority_grows_with_distance_and_volume() -> None:
    s = RebalancerSettings()
    chans = [chan(1, 150_000), chan(2, 10_000), chan(3, 150_000)]
    advice = {a.chan_id: a for a in advise(chans, s, volumes={3: 10_000_000})}
    # Further out of bounds ranks higher than barely out; routing volume adds to it.
    assert advice[2].priority > advice[1].priority
    assert advice[3].priority > advice[1].priority
    assert advise(chans, s, volumes={3: 10_000_000})[0].chan_id in (2, 3)


def test_exclusions_inactive_and_cooldown() -> None:
    s = RebalancerSettings(exclude_channels=[1], exclude_peers=[PEERS[2]])
    chans = [chan(1, 10_000), chan(2, 10_000), chan(3, 10_000, active=False), chan(4, 10_000)]
    advice = {a.chan_id: a for a in advise(chans, s, cooldowns={4: 2000.0}, now=1000.0)}
    assert advice[1].status == "excluded" and advice[2].status == "excluded"
    assert advice[3].status == "inactive"
    assert advice[4].status == "cooldown" and advice[4].cooldown_until == 2000.0
    assert pair(advice.values(), s) == []


def test_pair_fills_depleted_from_surplus_without_crossing_target() -> None:
    s = RebalancerSettings(max_amount_sat=10_000_000)
    chans = [chan(1, 100_000), chan(2, 900_000), chan(3, 600_000)]
    plans = pair(advise(chans, s), s)
    assert plans[0].incoming_chan_id == 1 and plans[0].outgoing_chan_id == 2
    assert plans[0].last_hop_pubkey == PEERS[1]
    moved_in = sum(p.amount_sat for p in plans if p.incoming_chan_id == 1)
    assert moved_in == 400_000  # exactly to the 0.5 target
    moved_out = {p.outgoing_chan_id: 0 for p in plans}
    for p in plans:
        moved_out[p.outgoing_chan_id] += p.amount_sat
    assert moved_out[2] <= 400_000 and moved_out.get(3, 0) <= 100_000


def test_pair_respects_amount_limits_and_same_peer() -> None:
    s = RebalancerSettings(min_amount_sat=50_000, max_amount_sat=100_000)
    # Same peer on both sides can never be a circular route.
    chans = [chan(1, 100_000, peer=5), chan(2, 900_000, peer=5), chan(3, 900_000, peer=6)]
    plans = pair(advise(chans, s), s)
    assert plans and all(p.outgoing_chan_id == 3 for p in plans if p.incoming_chan_id == 1)
    assert all(50_000 <= p.amount_sat <= 100_000 for p in plans)


def test_surplus_drains_into_channels_below_target() -> None:
    s = RebalancerSettings()
    plans = pair(advise([chan(1, 950_000), chan(2, 400_000)], s), s)
    # To the target, then (chan 1 still at 0.85) on to halfway between target and max.
    assert [(p.outgoing_chan_id, p.incoming_chan_id, p.amount_sat) for p in plans] == [(1, 2, 250_000)]
    plans = pair(advise([chan(1, 850_000), chan(2, 200_000), chan(3, 500_000)], s), s)
    # Back in bounds after the first pass: balanced channels are left alone.
    assert [(p.outgoing_chan_id, p.incoming_chan_id, p.amount_sat) for p in plans] == [(1, 2, 300_000)]


@pytest.mark.parametrize("busy", [[1], [2]])
def test_busy_channels_are_skipped(busy: list[int]) -> None:
    s = RebalancerSettings()
    assert pair(advise([chan(1, 100_000), chan(2, 900_000)], s), s, busy=busy) == []


def test_surplus_overflows_into_balanced_channels_up_to_the_midpoint() -> None:
    s = RebalancerSettings()
    # Nothing below the target: the surplus goes to balanced channels, at most to 0.65.
    plans = pair(advise([chan(1, 900_000), chan(2, 500_000), chan(3, 600_000)], s), s)
    moved = {p.incoming_chan_id: p.amount_sat for p in plans}
    assert moved == {2: 150_000, 3: 50_000}
    assert all(p.outgoing_chan_id == 1 for p in plans)


def test_a_balanced_channel_cooling_down_is_no_source() -> None:
    s = RebalancerSettings()
    chans = [chan(1, 100_000), chan(2, 700_000)]
    assert pair(advise(chans, s), s)
    assert pair(advise(chans, s, cooldowns={2: 2000.0}, now=1000.0), s) == []
