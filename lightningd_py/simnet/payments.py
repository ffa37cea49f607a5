"""Outgoing payments and circular self-payments over the simulated channels.

Routes are built over our own channels plus a simulated network in which every two peers are
connected (policy: 1000 msat base, 1 ppm). Fees follow each hop's policy, as LND computes them:
the hop that forwards over a channel charges base + amt * ppm / 1e6 of the amount it forwards.
A payment reports IN_FLIGHT, then SUCCEEDED or FAILED with LND's failure reasons; balances move
only on success. HTLC events go through htlcs.HtlcNotifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field

from lightningd_py.lnd.rpc import lightning_pb2 as ln
from lightningd_py.lnd.rpc import router_pb2 as rt
from lightningd_py.simnet.channels import ChannelBook
from lightningd_py.simnet.htlcs import HtlcNotifier, reserve_msat
from lightningd_py.simnet.hub import Hub
from lightningd_py.simnet.invoices import ACCEPTED, CANCELED, SETTLED, InvoiceError
from lightningd_py.simnet.node import NodeModel, SimChannel

__all__ = ["PaymentEngine", "PaymentRecord", "RouteError", "SimRoute"]

NETWORK_BASE_FEE_MSAT = 1000
NETWORK_FEE_PPM = 1
ZERO_PREIMAGE = "0" * 64
R = ln.PaymentFailureReason
S = ln.Payment


class RouteError(ValueError):
    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Hop:
    chan_id: int
    pub_key: str
    amt_to_forward_msat: int
    fee_msat: int
    expiry: int
    capacity_sat: int


@dataclass
class SimRoute:
    hops: list[Hop]
    total_amt_msat: int
    total_fees_msat: int
    total_time_lock: int
    out_chan: SimChannel
    in_chan: SimChannel | None = None

    def to_proto(self) -> ln.Route:
        return ln.Route(
            total_time_lock=self.total_time_lock,
            total_fees=self.total_fees_msat // 1000,
            total_amt=self.total_amt_msat // 1000,
            total_fees_msat=self.total_fees_msat,
            total_amt_msat=self.total_amt_msat,
            hops=[
                ln.Hop(
                    chan_id=h.chan_id,
                    chan_capacity=h.capacity_sat,
                    amt_to_forward=h.amt_to_forward_msat // 1000,
                    fee=h.fee_msat // 1000,
                    expiry=h.expiry,
                    amt_to_forward_msat=h.amt_to_forward_msat,
                    fee_msat=h.fee_msat,
                    pub_key=h.pub_key,
                    tlv_payload=True,
                )
                for h in self.hops
            ],
        )


@dataclass
class PaymentRecord:
    payment_index: int
    payment_hash: bytes
    value_msat: int
    payment_request: str
    creation_time_ns: int
    status: int = S.IN_FLIGHT
    fee_msat: int = 0
    preimage: bytes = b""
    failure_reason: int = R.FAILURE_REASON_NONE
    htlcs: list[ln.HTLCAttempt] = field(default_factory=list)

    def to_proto(self) -> ln.Payment:
        return ln.Payment(
            payment_hash=self.payment_hash.hex(),
            value=self.value_msat // 1000,
            creation_date=self.creation_time_ns // 1_000_000_000,
            fee=self.fee_msat // 1000,
            payment_preimage=self.preimage.hex() if self.preimage else ZERO_PREIMAGE,
            value_sat=self.value_msat // 1000,
            value_msat=self.value_msat,
            payment_request=self.payment_request,
            status=self.status,
            fee_sat=self.fee_msat // 1000,
            fee_msat=self.fee_msat,
            creation_time_ns=self.creation_time_ns,
            htlcs=self.htlcs,
            payment_index=self.payment_index,
            failure_reason=self.failure_reason,
        )


def _virtual_scid(a: str, b: str) -> int:
    lo, hi = sorted((a, b))
    h = int.from_bytes(hashlib.sha256(bytes.fromhex(lo) + bytes.fromhex(hi)).digest()[:4], "big")
    return ((100 + h % 400) << 40) | ((h >> 8) % 4000 << 16) | 1


def _net_fee(amt_msat: int) -> int:
    return NETWORK_BASE_FEE_MSAT + amt_msat * NETWORK_FEE_PPM // 1_000_000


class PaymentEngine:
    def __init__(
        self, node: NodeModel, channels: ChannelBook, htlcs: HtlcNotifier, latency: float = 0.005
    ) -> None:
        self.node = node
        self.htlcs = htlcs
        self.channels = channels
        self.latency = latency
        self.payments: list[PaymentRecord] = []
        self.by_hash: dict[bytes, PaymentRecord] = {}
        # Snapshots, so each subscriber sees every state the payment went through.
        self.updates: Hub[tuple[bytes, ln.Payment]] = Hub()
        self.external_preimages: dict[bytes, bytes] = {}
        self.fail_next: list[int] = []
        self._attempt_id = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def end_streams(self) -> None:
        self.updates.end_all()

    # ---- routing ----------------------------------------------------------------------
    def build_route(
        self,
        *,
        dest: str,
        amt_msat: int,
        outgoing_chan_ids: list[int] | tuple[int, ...] = (),
        last_hop_pubkey: str = "",
        final_cltv: int = 80,
        fee_limit_msat: int | None = None,
        allow_self_payment: bool = True,
    ) -> SimRoute:
        node = self.node
        if amt_msat <= 0:
            raise RouteError(R.FAILURE_REASON_ERROR, "amount must be greater than zero")
        is_self = dest == node.pubkey
        if is_self and not allow_self_payment:
            raise RouteError(R.FAILURE_REASON_NO_ROUTE, "no route: self-payments are not allowed")
        usable = [c for c in node.channels.values() if c.status == "open" and c.active]
        if outgoing_chan_ids:
            wanted = set(outgoing_chan_ids)
            candidates = [c for c in usable if c.chan_id in wanted]
        else:
            candidates = usable
        ins: list[SimChannel] = []
        if is_self:
            ins = [c for c in usable if not last_hop_pubkey or c.remote_pubkey == last_hop_pubkey]
            ins = [c for c in ins if c.remote_msat - reserve_msat(c) >= amt_msat]
            if not ins:
                raise RouteError(
                    R.FAILURE_REASON_NO_ROUTE, "no route: no inbound channel with enough liquidity"
                )
        best: SimRoute | None = None
        total_out_bw = 0
        for out in candidates:
            bandwidth = out.local_msat - reserve_msat(out)
            total_out_bw += max(0, bandwidth)
            options: list[SimChannel | None] = (
                [c for c in ins if c.chan_id != out.chan_id] if is_self else [None]
            )
            for inc in options:
                route = self._route_via(out, inc, dest, amt_msat, final_cltv)
                if route.total_amt_msat > bandwidth:
                    continue
                if fee_limit_msat is not None and route.total_fees_msat > fee_limit_msat:
                    continue
                if best is None or route.total_fees_msat < best.total_fees_msat:
                    best = route
        if best is None:
            if total_out_bw < amt_msat:
                raise RouteError(R.FAILURE_REASON_INSUFFICIENT_BALANCE, "insufficient local balance")
            raise RouteError(R.FAILURE_REASON_NO_ROUTE, "unable to find a path to destination")
        return best

    def _route_via(
        self, out: SimChannel, inc: SimChannel | None, dest: str, amt: int, final_cltv: int
    ) -> SimRoute:
        node = self.node
        height = node.block_height
        first = out.remote_pubkey
        # Nodes after the first hop, each with the channel that reaches it and who charges for it.
        path: list[tuple[int, str, int]] = []  # (chan_id, pubkey, capacity)
        if inc is not None:
            if inc.remote_pubkey != first:
                path.append((_virtual_scid(first, inc.remote_pubkey), inc.remote_pubkey, 10_000_000))
            path.append((inc.chan_id, node.pubkey, inc.capacity_sat))
        elif dest != first:
            path.append((_virtual_scid(first, dest), dest, 10_000_000))
        # Walk backwards as LND's newRoute does: hop i forwards amt_to_forward to hop i+1 and
        # keeps fee_msat for it (its policy on the next channel); expiry is the CLTV it forwards.
        nodes = [(out.chan_id, first, out.capacity_sat), *path]
        chan_id, pub, cap = nodes[-1]
        amount = amt
        expiry = height + final_cltv
        hops_rev = [Hop(chan_id, pub, amount, 0, expiry, cap)]
        for idx in range(len(nodes) - 2, -1, -1):
            next_chan = nodes[idx + 1][0]
            if inc is not None and next_chan == inc.chan_id:
                fee, delta = inc.fee_for(amount), inc.remote_time_lock_delta
            else:
                fee, delta = _net_fee(amount), 40
            chan_id, pub, cap = nodes[idx]
            hops_rev.append(Hop(chan_id, pub, amount, fee, expiry, cap))
            amount += fee
            expiry += delta
        hops = list(reversed(hops_rev))
        total_fees = amount - amt
        return SimRoute(hops, amount, total_fees, expiry, out, inc)

    # ---- sending ----------------------------------------------------------------------
    def start_payment(
        self,
        *,
        payment_hash: bytes,
        amt_msat: int,
        dest: str,
        payment_request: str,
        fee_limit_msat: int,
        timeout_seconds: int,
        outgoing_chan_ids: list[int],
        last_hop_pubkey: str,
        allow_self_payment: bool,
        final_cltv: int,
    ) -> PaymentRecord:
        """Register the payment (IN_FLIGHT) and run it in the background; raises for duplicates."""
        rec = self._register(payment_hash, amt_msat, payment_request)
        task = asyncio.create_task(
            self._run(
                rec,
                dest,
                fee_limit_msat,
                timeout_seconds,
                outgoing_chan_ids,
                last_hop_pubkey,
                allow_self_payment,
                final_cltv,
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return rec

    def _publish(self, rec: PaymentRecord) -> None:
        self.updates.publish_lazy(lambda: (rec.payment_hash, rec.to_proto()))

    def _fail(self, rec: PaymentRecord, reason: int) -> None:
        rec.status = S.FAILED
        rec.failure_reason = reason
        self._publish(rec)

    async def _run(
        self,
        rec: PaymentRecord,
        dest: str,
        fee_limit_msat: int,
        timeout_seconds: int,
        outgoing_chan_ids: list[int],
        last_hop_pubkey: str,
        allow_self_payment: bool,
        final_cltv: int,
    ) -> None:
        node = self.node
        await asyncio.sleep(0)
        try:
            route = self.build_route(
                dest=dest,
                amt_msat=rec.value_msat,
                outgoing_chan_ids=outgoing_chan_ids,
                last_hop_pubkey=last_hop_pubkey,
                final_cltv=final_cltv,
                fee_limit_msat=fee_limit_msat,
                allow_self_payment=allow_self_payment,
            )
        except RouteError as exc:
            self._fail(rec, exc.reason)
            return
        await self._attempt(rec, route, timeout_seconds)
        del node

    async def _attempt(self, rec: PaymentRecord, route: SimRoute, timeout_seconds: int) -> None:
        """One HTLC along `route`: lock the amount, deliver, then settle or fail the payment."""
        out = route.out_chan
        self._attempt_id += 1
        now_ns = time.time_ns()
        attempt = ln.HTLCAttempt(
            attempt_id=self._attempt_id,
            status=ln.HTLCAttempt.IN_FLIGHT,
            route=route.to_proto(),
            attempt_time_ns=now_ns,
        )
        rec.htlcs.append(attempt)
        out_htlc = out.next_htlc_id()
        out.local_msat -= route.total_amt_msat  # locked in the outgoing HTLC
        self.htlcs.event(rt.HtlcEvent.SEND, out_chan=out.chan_id, out_htlc=out_htlc, forward=rec.value_msat)
        self._publish(rec)
        await asyncio.sleep(self.latency)
        reason, preimage = await self._deliver(rec, route, timeout_seconds)
        attempt = rec.htlcs[-1]
        attempt.resolve_time_ns = time.time_ns()
        if reason is not None:
            out.local_msat += route.total_amt_msat
            attempt.status = ln.HTLCAttempt.FAILED
            attempt.failure.code = ln.Failure.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
            self.htlcs.event(rt.HtlcEvent.SEND, out_chan=out.chan_id, out_htlc=out_htlc, failed=True)
            self._fail(rec, reason)
            return
        out.remote_msat += route.total_amt_msat
        out.sent_msat += route.total_amt_msat
        out.num_updates += 2
        attempt.status = ln.HTLCAttempt.SUCCEEDED
        attempt.preimage = preimage
        self.htlcs.event(rt.HtlcEvent.SEND, out_chan=out.chan_id, out_htlc=out_htlc, preimage=preimage)
        rec.status = S.SUCCEEDED
        rec.preimage = preimage
        rec.fee_msat = route.total_fees_msat
        self._publish(rec)

    def _register(self, payment_hash: bytes, amt_msat: int, payment_request: str) -> PaymentRecord:
        existing = self.by_hash.get(payment_hash)
        if existing is not None:
            if existing.status == S.SUCCEEDED:
                raise InvoiceError("invoice is already paid")
            if existing.status == S.IN_FLIGHT:
                raise InvoiceError("payment is in transition")
        rec = PaymentRecord(
            payment_index=len(self.payments) + 1,
            payment_hash=payment_hash,
            value_msat=amt_msat,
            payment_request=payment_request,
            creation_time_ns=time.time_ns(),
        )
        self.payments.append(rec)
        self.by_hash[payment_hash] = rec
        self._publish(rec)
        return rec

    def route_from_proto(self, route: ln.Route) -> SimRoute:
        """A caller-built route (SendToRouteV2): first hop over one of our channels."""
        if not route.hops:
            raise RouteError(R.FAILURE_REASON_ERROR, "route: at least one hop is required")
        out = self.node.channels.get(route.hops[0].chan_id)
        if out is None or out.status != "open" or out.remote_pubkey != route.hops[0].pub_key:
            raise RouteError(R.FAILURE_REASON_ERROR, "route: the first hop is not one of our open channels")
        inc = None
        if route.hops[-1].pub_key == self.node.pubkey:
            inc = self.node.channels.get(route.hops[-1].chan_id)
            if inc is None or inc.status != "open" or len(route.hops) < 2:
                raise RouteError(
                    R.FAILURE_REASON_ERROR, "route: the last hop is not one of our open channels"
                )
        hops = [
            Hop(h.chan_id, h.pub_key, h.amt_to_forward_msat, h.fee_msat, h.expiry, h.chan_capacity)
            for h in route.hops
        ]
        total_fees = sum(h.fee_msat for h in hops)
        amt = hops[-1].amt_to_forward_msat
        return SimRoute(hops, amt + total_fees, total_fees, route.total_time_lock or hops[0].expiry, out, inc)

    async def send_to_route(self, payment_hash: bytes, route: SimRoute) -> ln.HTLCAttempt:
        """SendToRouteV2: one attempt along the given route; returns the resolved attempt."""
        rec = self._register(payment_hash, route.hops[-1].amt_to_forward_msat, "")
        if route.out_chan.local_msat - reserve_msat(route.out_chan) < route.total_amt_msat:
            self._attempt_id += 1
            attempt = ln.HTLCAttempt(
                attempt_id=self._attempt_id,
                status=ln.HTLCAttempt.FAILED,
                route=route.to_proto(),
                attempt_time_ns=time.time_ns(),
                resolve_time_ns=time.time_ns(),
            )
            attempt.failure.code = ln.Failure.TEMPORARY_CHANNEL_FAILURE
            rec.htlcs.append(attempt)
            self._fail(rec, R.FAILURE_REASON_NO_ROUTE)
            return attempt
        await self._attempt(rec, route, 60)
        return rec.htlcs[-1]

    async def _deliver(
        self, rec: PaymentRecord, route: SimRoute, timeout_seconds: int
    ) -> tuple[int | None, bytes]:
        """What the destination does with the HTLC: (failure reason or None, preimage)."""
        if self.fail_next:
            return self.fail_next.pop(0), b""
        inc = route.in_chan
        if inc is None:
            preimage = self.external_preimages.get(rec.payment_hash)
            if preimage is None:
                return R.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS, b""
            return None, preimage
        reg = self.node.invoices
        hub = reg.single.setdefault(rec.payment_hash, Hub())
        sub = hub.subscribe()
        try:
            inv = reg.lookup(rec.payment_hash)
            in_htlc = inc.next_htlc_id()
            reg.pay(rec.payment_hash, rec.value_msat, chan_id=inc.chan_id)
            if inv.state == ACCEPTED:
                # A hold invoice: wait for SettleInvoice/CancelInvoice, up to the payment timeout.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(1, timeout_seconds)):
                        async for _ in sub:
                            if inv.state != ACCEPTED:
                                break
        except InvoiceError:
            return R.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS, b""
        finally:
            sub.close()
            if not len(hub) and reg.single.get(rec.payment_hash) is hub:
                del reg.single[rec.payment_hash]
        if inv.state != SETTLED:
            if inv.state == ACCEPTED:
                reg.cancel(rec.payment_hash)
                return R.FAILURE_REASON_TIMEOUT, b""
            assert inv.state == CANCELED
            return R.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS, b""
        inc.remote_msat -= rec.value_msat
        inc.local_msat += rec.value_msat
        inc.received_msat += rec.value_msat
        inc.num_updates += 2
        self.htlcs.event(rt.HtlcEvent.RECEIVE, in_chan=inc.chan_id, in_htlc=in_htlc, preimage=inv.r_preimage)
        self.htlcs.final(inc.chan_id, in_htlc)
        return None, inv.r_preimage

    # ---- listing ----------------------------------------------------------------------
    def query(
        self,
        *,
        index_offset: int,
        max_payments: int,
        include_incomplete: bool,
        reversed_: bool,
        start: int = 0,
        end: int = 0,
    ) -> tuple[list[PaymentRecord], int, int]:
        def keep(p: PaymentRecord) -> bool:
            if not include_incomplete and p.status != S.SUCCEEDED:
                return False
            secs = p.creation_time_ns // 1_000_000_000
            return not ((start and secs < start) or (end and secs > end))

        found: list[PaymentRecord] = []
        limit = max_payments or len(self.payments) or 1
        if reversed_:
            upto = len(self.payments) if index_offset == 0 else min(index_offset - 1, len(self.payments))
            for i in range(upto - 1, -1, -1):
                if keep(self.payments[i]):
                    found.append(self.payments[i])
                    if len(found) >= limit:
                        break
            found.reverse()
        else:
            for p in self.payments[index_offset:]:
                if keep(p):
                    found.append(p)
                    if len(found) >= limit:
                        break
        if not found:
            return [], 0, 0
        return found, found[0].payment_index, found[-1].payment_index
