"""A slow invoice-stream client lags and then catches up; it never stops receiving.

LND queues a subscriber's updates without limit, so a client that reads slowly only falls
behind. Simnet must do the same over real gRPC: while the client's HTTP/2 window is full,
simnet waits in its write to that client, and it goes on writing once the client reads again,
with nothing lost, repeated or reordered.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import lightning_pb2_grpc

from .conftest import SimnetProc

# Each burst adds N invoices, then settles them: 2 * N updates per burst.
N = 5000
# With BDP probing the client's window grows to a few MiB; without it, it stays at 64 KiB.
WINDOWS = {"bdp": [], "no-bdp": [("grpc.http2.bdp_probe", 0)]}


async def _subscribed(simnet: SimnetProc, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (await asyncio.to_thread(simnet.control.state))["subscribers"]["invoices"] != 1:
        assert time.monotonic() < deadline, "the subscription never reached simnet"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_briefly_slow_reader_gets_every_invoice_update_in_order(simnet: SimnetProc, window: str) -> None:
    """Two back-to-back bursts to a reader that pauses 2 ms every 100 messages and, from its
    2000th message until both bursts are done, stops reading: the stream fills the client's
    window, simnet waits in its write, and every add and every settlement still arrives, in
    index order."""

    async def run() -> None:
        ch = simnet.channel(options=WINDOWS[window])
        call = lightning_pb2_grpc.LightningStub(ch).SubscribeInvoices(ln.InvoiceSubscription())
        adds: list[int] = []
        settles: list[int] = []
        size = 0
        bursts_done = asyncio.Event()

        async def read() -> None:
            nonlocal size
            count = 0
            async for inv in call:
                count += 1
                size += inv.ByteSize()
                if inv.state == ln.Invoice.SETTLED:
                    settles.append(inv.settle_index)
                else:
                    adds.append(inv.add_index)
                if count == 2000:
                    await bursts_done.wait()
                elif count % 100 == 0:
                    await asyncio.sleep(0.002)
                if len(settles) == 2 * N:
                    return

        try:
            await _subscribed(simnet)
            reader = asyncio.create_task(read())
            for _ in range(2):
                await asyncio.to_thread(simnet.control.burst_settle, N)
            bursts_done.set()
            async with asyncio.timeout(30):
                await reader
            assert adds == list(range(1, 2 * N + 1))
            assert settles == list(range(1, 2 * N + 1))
            # More than the client's window takes, so simnet waited in its writes meanwhile.
            assert size > 8 << 20
            # Caught up and still subscribed.
            assert (await asyncio.to_thread(simnet.control.state))["subscribers"]["invoices"] == 1
        finally:
            call.cancel()
            await ch.close()

    asyncio.run(run())
