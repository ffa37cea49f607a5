"""HTLC events as LND's htlcswitch notifier reports them, and simulated forwards.

A forward emits a ForwardEvent, then a SettleEvent (or ForwardFailEvent) carrying the same
incoming/outgoing channel and HTLC ids, then a FinalHtlcEvent for the incoming HTLC; one the
outgoing channel cannot carry becomes a LinkFailEvent. Successful forwards move both channels'
balances and join the forwarding history.
"""

from __future__ import annotations

import hashlib
import time

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.simnet.node import ForwardRecord, NodeModel, SimChannel

__all__ = ["HtlcNotifier", "reserve_msat"]


def reserve_msat(chan: SimChannel) -> int:
    """The channel reserve (1% of capacity, at least the dust limit) that cannot be spent."""
    return max(chan.capacity_sat // 100, 354) * 1000


class HtlcNotifier:
    def __init__(self, node: NodeModel) -> None:
        self.node = node

    def event(
        self,
        event_type: int,
        *,
        in_chan: int = 0,
        in_htlc: int = 0,
        out_chan: int = 0,
        out_htlc: int = 0,
        forward: int = 0,
        forward_in: int = 0,
        preimage: bytes = b"",
        failed: bool = False,
        link_fail: str = "",
        timestamp_ns: int = 0,
    ) -> None:
        hub = self.node.htlc_events
        if not len(hub):
            return
        ev = rt.HtlcEvent(
            incoming_channel_id=in_chan,
            outgoing_channel_id=out_chan,
            incoming_htlc_id=in_htlc,
            outgoing_htlc_id=out_htlc,
            timestamp_ns=timestamp_ns or time.time_ns(),
            event_type=event_type,
        )
        height = self.node.block_height
        if link_fail:
            ev.link_fail_event.info.CopyFrom(
                rt.HtlcInfo(
                    incoming_amt_msat=forward_in,
                    outgoing_amt_msat=forward,
                    incoming_timelock=height + 120,
                    outgoing_timelock=height + 80,
                )
            )
            ev.link_fail_event.wire_failure = ln.Failure.TEMPORARY_CHANNEL_FAILURE
            ev.link_fail_event.failure_detail = rt.INSUFFICIENT_BALANCE
            ev.link_fail_event.failure_string = link_fail
        elif forward:
            ev.forward_event.info.CopyFrom(
                rt.HtlcInfo(
                    incoming_amt_msat=forward_in,
                    outgoing_amt_msat=forward,
                    incoming_timelock=height + 120,
                    outgoing_timelock=height + 80,
                )
            )
        elif failed:
            ev.forward_fail_event.SetInParent()
        else:
            ev.settle_event.preimage = preimage
        hub.publish(ev)

    def final(self, chan_id: int, htlc_id: int) -> None:
        hub = self.node.htlc_events
        if len(hub):
            ev = rt.HtlcEvent(
                incoming_channel_id=chan_id, incoming_htlc_id=htlc_id, timestamp_ns=time.time_ns()
            )
            ev.final_htlc_event.settled = True
            ev.final_htlc_event.offchain = True
            hub.publish(ev)

    def forward(
        self, chan_in: SimChannel, chan_out: SimChannel, amt_out_msat: int, fee_msat: int, fail: bool = False
    ) -> ForwardRecord | None:
        """Simulate an HTLC forwarded from chan_in to chan_out; returns the history entry or None."""
        amt_in = amt_out_msat + fee_msat
        in_htlc = chan_in.next_htlc_id()
        if (
            chan_out.local_msat - reserve_msat(chan_out) < amt_out_msat
            or chan_in.remote_msat < amt_in
            or chan_out.status != "open"
            or not chan_out.active
        ):
            self.event(
                rt.HtlcEvent.FORWARD,
                in_chan=chan_in.chan_id,
                in_htlc=in_htlc,
                out_chan=chan_out.chan_id,
                forward=amt_out_msat,
                forward_in=amt_in,
                link_fail="insufficient bandwidth",
            )
            return None
        out_htlc = chan_out.next_htlc_id()
        ids = {
            "in_chan": chan_in.chan_id,
            "in_htlc": in_htlc,
            "out_chan": chan_out.chan_id,
            "out_htlc": out_htlc,
        }
        self.event(rt.HtlcEvent.FORWARD, forward=amt_out_msat, forward_in=amt_in, **ids)
        if fail:
            self.event(rt.HtlcEvent.FORWARD, failed=True, **ids)
            return None
        preimage = hashlib.sha256(
            b"forward" + chan_in.chan_id.to_bytes(8, "big") + in_htlc.to_bytes(8, "big")
        ).digest()
        chan_in.remote_msat -= amt_in
        chan_in.local_msat += amt_in
        chan_in.received_msat += amt_in
        chan_out.local_msat -= amt_out_msat
        chan_out.remote_msat += amt_out_msat
        chan_out.sent_msat += amt_out_msat
        chan_in.num_updates += 2
        chan_out.num_updates += 2
        # The forwarding log records the forward at the instant it settled.
        settled_at = time.time_ns()
        self.event(rt.HtlcEvent.FORWARD, preimage=preimage, timestamp_ns=settled_at, **ids)
        self.final(chan_in.chan_id, in_htlc)
        rec = ForwardRecord(settled_at, chan_in.chan_id, chan_out.chan_id, amt_in, amt_out_msat)
        self.node.forwards.append(rec)
        return rec
