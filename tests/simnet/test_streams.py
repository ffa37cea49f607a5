"""Stream subscriptions over real gRPC: a client that goes away leaves simnet's hubs, as LND
drops the subscription of a client whose stream context is done."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.lnd.rpc import stateservice_pb2 as st

from .conftest import SimnetProc, stubs

# No BDP probing: the client's window stays at 64 KiB, so a burst it does not read leaves
# simnet waiting in a write to it (as a slow or stuck client does).
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]
KINDS = ("invoices", "htlc_events", "payments", "channel_events", "peer_events", "backups", "state")


async def _subscribers(simnet: SimnetProc, expected: dict[str, int], within: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        counts = await asyncio.to_thread(lambda: simnet.control.state()["subscribers"])
        if all(counts[k] == n for k, n in expected.items()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.05)


def test_subscribers_leave_when_their_client_goes_away(simnet: SimnetProc) -> None:
    async def run() -> None:
        ch = simnet.channel(options=SMALL_WINDOW)
        lnd, router, _, state = stubs(ch)
        calls: dict[str, Any] = {
            "invoices": lnd.SubscribeInvoices(ln.InvoiceSubscription()),
            "htlc_events": router.SubscribeHtlcEvents(rt.SubscribeHtlcEventsRequest()),
            "payments": router.TrackPayments(rt.TrackPaymentsRequest()),
            "channel_events": lnd.SubscribeChannelEvents(ln.ChannelEventSubscription()),
            "peer_events": lnd.SubscribePeerEvents(ln.PeerEventSubscription()),
            "backups": lnd.SubscribeChannelBackups(ln.ChannelBackupSubscription()),
            "state": state.SubscribeState(st.SubscribeStateRequest()),
        }
        everyone = dict.fromkeys(KINDS, 1)
        assert await _subscribers(simnet, everyone) == {**everyone}

        # Nobody reads: simnet ends up waiting in writes of the invoice and HTLC streams.
        await asyncio.to_thread(simnet.control.burst_settle, 2000)
        calls["invoices"].cancel()
        assert await _subscribers(simnet, {**everyone, "invoices": 0}) == {**everyone, "invoices": 0}

        # The client goes away with every other stream open, the HTLC stream mid-write.
        await ch.close()
        nobody = dict.fromkeys(KINDS, 0)
        assert await _subscribers(simnet, nobody) == nobody
        # Later updates have nobody to be queued for.
        await asyncio.to_thread(simnet.control.burst_settle, 10)
        assert await _subscribers(simnet, nobody, within=0) == nobody

    asyncio.run(run())
